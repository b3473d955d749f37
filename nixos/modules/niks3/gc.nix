# Garbage collection of the cache: niks3-gc.timer runs niks3-gc.service (`niks3 gc` against the local
# server) on a schedule, presenting a gc-scoped token, else the admin token.
args@{ config, lib, ... }:
let
  cfg = config.services.niks3;
  common = import ./lib.nix args;

  # The token the GC client sends: its own gc-scoped token, else the admin token (the configured file, or
  # the one the server generated on first start).
  gcTokenSource =
    if cfg.gc.tokenFile != null then
      cfg.gc.tokenFile
    else if cfg.apiTokenFile != null then
      cfg.apiTokenFile
    else
      "${common.stateDir}/api-token";
in
{
  options.services.niks3.gc = {
    enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Run `niks3 gc` periodically (niks3-gc.timer → niks3-gc.service).";
    };
    olderThan = lib.mkOption {
      type = common.duration;
      default = "720h";
      description = "Forget closures last pushed longer ago than this (Go duration: 720h, 30d, 1h30m).";
    };
    failedUploadsOlderThan = lib.mkOption {
      type = common.duration;
      default = "6h";
      description = "Abort uploads in flight for longer than this; also the grace period before deletion.";
    };
    schedule = lib.mkOption {
      type = lib.types.str;
      default = "daily";
      example = "*-*-* 03:00:00";
      description = "When to collect (systemd OnCalendar syntax).";
    };
    randomizedDelaySec = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 1800;
      description = "Random delay added to each run (RandomizedDelaySec), in seconds.";
    };
    tokenFile = common.secretFileOption "gc-token" ''
      File holding a token with the `gc` scope for the GC timer (`niks3 token create --name gc-timer
      --scope gc`): it can collect what is older than the API's floors (1 h) but cannot push or wipe
      the cache. null: the timer uses the admin token (apiTokenFile, or the generated one).
    '';
  };

  config = lib.mkIf (cfg.enable && cfg.gc.enable) {
    systemd.services.niks3-gc = {
      description = "niks3 garbage collection";
      documentation = [ "https://github.com/niks3/niks3/blob/main/docs/nixos.md#reading-the-gc-output" ];
      wants = [ "niks3.service" ];
      after = [ "niks3.service" ];
      serviceConfig =
        common.hardening
        // {
          Type = "oneshot";
        }
        // common.tokenClient {
          command = "gc";
          servers = [ common.localUrl ];
          tokenFile = gcTokenSource;
          args = [
            "--older-than=${cfg.gc.olderThan}"
            "--failed-uploads-older-than=${cfg.gc.failedUploadsOlderThan}"
          ];
        };
    };
    systemd.timers.niks3-gc = {
      description = "Periodic niks3 garbage collection";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.gc.schedule;
        RandomizedDelaySec = cfg.gc.randomizedDelaySec;
        Persistent = true;
        Unit = "niks3-gc.service";
      };
    };
  };
}
