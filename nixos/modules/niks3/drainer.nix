# A builder that pushes to a remote server: niks3-drain.service (`niks3 drain`) empties this machine's
# spool into hook.serverUrl (one server, or a list of servers sharing one bucket and database: a push
# goes to the next when one does not answer) with this builder's own push token. Without hook.serverUrl
# the local server drains the spool instead (server.nix), and this role adds nothing.
args@{ config, lib, ... }:
let
  cfg = config.services.niks3;
  hookCfg = cfg.hook;
  common = import ./lib.nix args;
  servers = lib.toList hookCfg.serverUrl;
in
{
  options.services.niks3.hook = {
    serverUrl = lib.mkOption {
      type = lib.types.nullOr (lib.types.either lib.types.str (lib.types.nonEmptyListOf lib.types.str));
      default = null;
      example = [
        "https://cache-a.example.org"
        "https://cache-b.example.org"
      ];
      description = ''
        Remote niks3 server to push to, or a list of servers sharing one bucket and database (tried in
        order; a push goes to the next when one does not answer, see docs/deployment.md); null means the
        local services.niks3 drains the spool.
      '';
    };
    tokenFile = common.secretFileOption "push-token" ''
      File holding a token with the `push` scope for the remote server (required with serverUrl):
      on the server, `niks3 token create --name <this host> --scope push`, one per builder, so each
      can be revoked on its own (`niks3 token revoke <this host>`).
    '';
  };

  config = lib.mkMerge [
    (lib.mkIf hookCfg.enable {
      assertions = [
        {
          assertion = hookCfg.serverUrl == null || hookCfg.tokenFile != null;
          message =
            "services.niks3.hook: serverUrl = ${lib.concatStringsSep ", " servers} needs hook.tokenFile "
            + "(a push token: `niks3 token create --name <host> --scope push` on the server).";
        }
      ];
      warnings =
        lib.optional (hookCfg.serverUrl == null && hookCfg.tokenFile != null)
          "services.niks3.hook.tokenFile is unused: serverUrl is null, so the local server drains the spool.";
    })

    (lib.mkIf (hookCfg.enable && hookCfg.serverUrl != null) {
      systemd.services.niks3-drain = common.spoolUnit { } // {
        description = "niks3 drain: push this builder's spool to ${lib.concatStringsSep ", " servers}";
        environment.NIX_REMOTE = "daemon";
        serviceConfig =
          common.spoolServiceConfig { }
          // {
            # The drainer retries with backoff itself; this only covers crashes.
            Restart = "always";
            RestartSec = "10s";
          }
          // common.tokenClient {
            command = "drain";
            inherit servers;
            inherit (hookCfg) tokenFile;
            args = [
              "--spool-dir ${lib.escapeShellArg hookCfg.spoolDir}"
              "--gcroots-dir ${lib.escapeShellArg hookCfg.gcrootsDir}"
              "--compression-level ${toString cfg.compressionLevel}"
            ]
            ++ lib.optional (cfg.maxNarSize != null) "--max-nar-size ${lib.escapeShellArg cfg.maxNarSize}";
          };
      };
    })
  ];
}
