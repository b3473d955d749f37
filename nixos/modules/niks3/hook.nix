# The builders' side: Nix's post-build-hook (niks3-hook, run by nix-daemon as root) queues every freshly
# built path to a durable spool and keeps it alive with a GC root. The local server drains the spool
# (hook.serverUrl = null), or niks3-drain.service pushes it to a remote server (drainer.nix).
args@{ config, lib, ... }:
let
  cfg = config.services.niks3;
  hookCfg = cfg.hook;
  common = import ./lib.nix args;
  inherit (args) pkgs;

  hookWrapper = pkgs.writeShellScript "niks3-post-build-hook" ''
    # Installed as Nix's post-build-hook by services.niks3.hook. niks3-hook never fails a build: it
    # queues the outputs to the spool in well under a millisecond and always exits 0.
    export NIKS3_SPOOL_DIR=${lib.escapeShellArg hookCfg.spoolDir}
    export NIKS3_GCROOTS_DIR=${lib.escapeShellArg hookCfg.gcrootsDir}
    export NIKS3_NIX_STORE_DIR=${lib.escapeShellArg builtins.storeDir}
    exec ${hookCfg.package}/bin/niks3-hook
  '';
in
{
  options.services.niks3.hook = {
    enable = lib.mkEnableOption ''
      the builders' side: Nix's post-build-hook queues every locally built path to the niks3 spool,
      drained by the local server (serverUrl = null) or pushed to serverUrl by niks3-drain.service
    '';
    package = lib.mkPackageOption pkgs "niks3-hook" { };
    spoolDir = lib.mkOption {
      type = lib.types.str;
      default = "${common.stateDir}/spool";
      description = "The durable queue the hook writes and the drainer empties.";
    };
    gcrootsDir = lib.mkOption {
      type = lib.types.str;
      default = "/nix/var/nix/gcroots/niks3";
      description = "GC roots keeping queued paths alive in the local store until they are uploaded.";
    };
    wrapper = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      default = hookWrapper;
      defaultText = lib.literalExpression "pkgs.writeShellScript \"niks3-post-build-hook\" …";
      description = ''
        The script installed as nix.settings.post-build-hook (read-only). To run another hook too,
        set post-build-hook with lib.mkForce to your own script ending in `exec ''${wrapper}`.
      '';
    };
  };

  config = lib.mkIf hookCfg.enable {
    assertions = [
      {
        assertion = hookCfg.serverUrl != null || cfg.enable;
        message =
          "services.niks3.hook: serverUrl is null, which means the local server drains the "
          + "spool, but services.niks3.enable is false; set hook.serverUrl and hook.tokenFile to push "
          + "to a remote niks3, or enable the server on this machine.";
      }
    ];

    nix.settings.post-build-hook = "${hookWrapper}";
  };
}
