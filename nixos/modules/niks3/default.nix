# NixOS module for niks3, a self-filling Nix binary cache, in one file per role:
#   server.nix   services.niks3: the cache server (`niks3 serve`): PostgreSQL bookkeeping, S3 or a local
#                object directory, signing keys, the read proxy on httpAddr, and `settings` (RFC 42),
#                rendered to the server's NIKS3_* environment.
#   gc.nix       services.niks3.gc: the GC timer (`niks3-gc.timer` → `niks3 gc`).
#   nginx.nix    services.niks3.nginx: an nginx virtual host in front of the server.
#   hook.nix     services.niks3.hook: the builders' side: Nix's post-build-hook queues every freshly built
#                path to a durable spool, which the local server drains (hook.serverUrl = null)...
#   drainer.nix  ...or `niks3 drain` (niks3-drain.service) pushes to a remote server (hook.serverUrl set).
#   lib.nix      what the roles share (names, types, hardening, unit skeletons); not a module.
# This file holds what every role needs: the package, the user, the directories and the secrets check.
#
# Who owns what (see docs/nixos.md, "Users and the spool"):
#   - The services run as the static system user `niks3` (not DynamicUser: the spool and the GC roots
#     directory must exist with a stable owner before the service first starts, because the nix-daemon's
#     hook writes into them at any time).
#   - niks3-hook runs inside nix-daemon, as root. It writes entries into spool/tmp, fsyncs and renames
#     them into spool/new, and adds symlinks in the GC roots directory. Root needs no permission bits,
#     so every directory is owned by niks3:niks3 (created by systemd-tmpfiles with the right owner, so
#     the hook never creates a root-owned directory the service could not use; the hook itself creates
#     no directory and follows no symlink in the spool). Entries are handed to the spool's owner, mode
#     0640: the service reads them and renames/unlinks them.
#   - The server and the drainer read the Nix store through `nix-daemon --stdio` (on `path`), which
#     forwards to the system's nix-daemon (NIX_REMOTE=daemon): the worker protocol, any Nix version.
#   - Secrets never enter the Nix store: options take runtime paths (strings, e.g. sops-nix paths) and
#     systemd's LoadCredential copies them into $CREDENTIALS_DIRECTORY (`%d`) for the service alone.
#     They never enter a unit's environment either: `settings` refuses the NIKS3_* names of secrets.
args@{ config, lib, ... }:
let
  cfg = config.services.niks3;
  hookCfg = cfg.hook;
  common = import ./lib.nix args;
  inherit (args) pkgs;
  inherit (common) user group stateDir;
  storageDir = cfg.settings.storage_dir;

  # Every secret the module hands to a service, with the option that names it (for assertions).
  secretOptions =
    lib.filterAttrs (_: v: v != null) {
      "services.niks3.apiTokenFile" = cfg.apiTokenFile;
      "services.niks3.s3.accessKeyFile" = cfg.s3.accessKeyFile;
      "services.niks3.s3.secretKeyFile" = cfg.s3.secretKeyFile;
      "services.niks3.database.urlFile" = cfg.database.urlFile;
      "services.niks3.hook.tokenFile" = hookCfg.tokenFile;
      "services.niks3.gc.tokenFile" = cfg.gc.tokenFile;
    }
    // lib.listToAttrs (
      lib.imap0 (i: f: lib.nameValuePair "services.niks3.signKeyFiles[${toString i}]" f) cfg.signKeyFiles
    );
  # The enabled role decides which secrets are actually used.
  usedSecrets = lib.filterAttrs (
    n: _: if n == "services.niks3.hook.tokenFile" then hookCfg.enable else cfg.enable
  ) secretOptions;
  badSecrets = lib.filterAttrs (
    _: p: !(lib.hasPrefix "/" p) || lib.hasPrefix "${builtins.storeDir}/" p
  ) usedSecrets;
in
{
  imports = [
    ./server.nix
    ./gc.nix
    ./nginx.nix
    ./hook.nix
    ./drainer.nix
  ];

  options.services.niks3.package = lib.mkPackageOption pkgs "niks3" { };

  config = lib.mkMerge [
    {
      assertions = [
        {
          assertion = badSecrets == { };
          message =
            "services.niks3: secrets must be absolute runtime paths outside ${builtins.storeDir} "
            + "(the store is world-readable; use e.g. a sops-nix path under /run/secrets): "
            + lib.concatStringsSep ", " (lib.mapAttrsToList (n: v: "${n} = ${v}") badSecrets);
        }
      ];
    }

    # Shared by both roles: the user the server and the drainer run as, and the directories the
    # nix-daemon's hook writes into, created with their final owner before any hook or service runs.
    (lib.mkIf (cfg.enable || hookCfg.enable) {
      users.users.${user} = {
        isSystemUser = true;
        inherit group;
        home = stateDir;
        description = "niks3 binary cache";
      };
      users.groups.${group} = { };

      # `niks3 push`, `niks3 key`, `niks3 gc` for the administrator.
      environment.systemPackages = [ cfg.package ];

      # The server and the drainer read path metadata through nix-daemon, also on machines that
      # restrict nix.settings.allowed-users.
      nix.settings.extra-allowed-users = [ user ];

      systemd.tmpfiles.rules = [
        "d ${stateDir} 0750 ${user} ${group} - -"
        "d ${hookCfg.gcrootsDir} 0755 ${user} ${group} - -"
      ]
      ++ common.spoolRules hookCfg.spoolDir
      # The server's local object directory (server.nix; one definition here, where the others are).
      ++ lib.optional (cfg.enable && storageDir != null) "d ${storageDir} 0750 ${user} ${group} - -";
    })
  ];
}
