# NixOS module for niks3, a self-filling Nix binary cache.
#
# Two roles, usable together or apart:
#   services.niks3       the cache server (`niks3 serve`): PostgreSQL bookkeeping, S3 or a local object
#                        directory, signing keys, the read proxy on httpAddr, optional nginx in front, and
#                        the GC timer (`niks3-gc.timer`).
#   services.niks3.hook  the builders' side: Nix's post-build-hook queues every freshly built path to a
#                        durable spool; the local server drains it (serverUrl = null) or `niks3 drain`
#                        pushes it to a remote server (serverUrl set).
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
{ config, lib, pkgs, ... }:
let
  inherit (lib)
    mkOption mkEnableOption mkPackageOption mkIf mkMerge mkDefault types optional optionals
    optionalAttrs concatStringsSep imap0 escapeShellArgs escapeShellArg hasPrefix
    literalExpression;

  cfg = config.services.niks3;
  hookCfg = cfg.hook;

  user = "niks3";
  group = "niks3";
  stateDir = "/var/lib/niks3";

  # Go-style durations as `niks3 gc` parses them: 720h, 6h, 30m, 10s, 7d, 1h30m.
  duration = types.strMatching "([0-9]+(ns|us|ms|s|m|h|d))+";

  # A runtime path to a secret; a string on purpose, so that a Nix path literal (which would be copied
  # into the world-readable store) is a type error.
  secretPath = types.str;

  # An optional secret file option; `example` is the file's name under /run/secrets/niks3 (sops-nix style).
  secretFileOption = example: description: mkOption {
    type = types.nullOr secretPath;
    default = null;
    example = "/run/secrets/niks3/${example}";
    inherit description;
  };

  # `httpAddr` as a URL that local clients (the GC service, nginx) can reach: the wildcard addresses
  # and `:PORT` (all interfaces) become the loopback address.
  addrParts = builtins.match "(.*):([0-9]+)" cfg.httpAddr;
  addrHost = if addrParts == null then "127.0.0.1" else builtins.elemAt addrParts 0;
  addrPort = if addrParts == null then 5751 else lib.toInt (builtins.elemAt addrParts 1);
  loopbackHost =
    if addrHost == "" || addrHost == "0.0.0.0" then "127.0.0.1"
    else if addrHost == "[::]" then "[::1]"
    else addrHost;
  localUrl = "http://${loopbackHost}:${toString addrPort}";
  isLoopback = builtins.elem addrHost [ "127.0.0.1" "[::1]" "localhost" ];

  nixPackage = config.nix.package or pkgs.nix;

  s3Fields = {
    inherit (cfg.s3) endpoint bucket accessKeyFile secretKeyFile;
  };
  s3Set = lib.attrNames (lib.filterAttrs (_: v: v != null) s3Fields);
  s3Missing = lib.attrNames (lib.filterAttrs (_: v: v == null) s3Fields);
  # Some s3.* set (for the assertions) / all of them set (what the service gets).
  anyS3 = s3Set != [ ];
  useS3 = s3Missing == [ ];

  publicScheme = if cfg.nginx.forceSSL || cfg.nginx.enableACME then "https" else "http";
  cacheUrl =
    if cfg.cacheUrl != null then cfg.cacheUrl
    else if cfg.nginx.enable && cfg.nginx.domain != null then "${publicScheme}://${cfg.nginx.domain}"
    else null;

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
    // lib.listToAttrs (imap0 (i: f: lib.nameValuePair "services.niks3.signKeyFiles[${toString i}]" f)
      cfg.signKeyFiles);
  # The enabled role decides which secrets are actually used.
  usedSecrets = lib.filterAttrs
    (n: _: if n == "services.niks3.hook.tokenFile" then hookCfg.enable else cfg.enable)
    secretOptions;
  badSecrets = lib.filterAttrs (_: p: !(hasPrefix "/" p) || hasPrefix "${builtins.storeDir}/" p) usedSecrets;

  signKeyCreds = imap0 (i: f: { name = "sign-key-${toString i}"; path = f; }) cfg.signKeyFiles;

  # The token the GC client sends: its own gc-scoped token, else the admin token (the configured file, or
  # the one the server generated on first start).
  gcTokenSource =
    if cfg.gc.tokenFile != null then cfg.gc.tokenFile
    else if cfg.apiTokenFile != null then cfg.apiTokenFile
    else "${stateDir}/api-token";

  # Directories outside the state directory that a service must be able to write despite
  # ProtectSystem=strict.
  outsideState = p: !(hasPrefix "${stateDir}/" p);

  # Shared systemd hardening for every niks3 unit.
  hardening = {
    User = user;
    Group = group;
    UMask = "0027";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectHostname = true;
    ProtectClock = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    RemoveIPC = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
  };

  serverEnv =
    {
      NIKS3_STATE_DIR = stateDir;
      NIKS3_HTTP_ADDR = cfg.httpAddr;
      NIKS3_SPOOL_DIR = hookCfg.spoolDir;
      NIKS3_GCROOTS_DIR = hookCfg.gcrootsDir;
      # The daemon is not root: it reads the Nix database through nix-daemon.
      NIX_REMOTE = "daemon";
    }
    // (if cfg.database.createLocally then {
      # Peer authentication over the unix socket: the unix user niks3 is the PostgreSQL role niks3.
      NIKS3_DB = "host=/run/postgresql user=${user} dbname=niks3";
    } else optionalAttrs (cfg.database.urlFile != null) {
      NIKS3_DB_FILE = "%d/db-url";
    })
    // optionalAttrs (cfg.storeDir != null) { NIKS3_STORAGE_DIR = cfg.storeDir; }
    // optionalAttrs useS3 {
      NIKS3_S3_ENDPOINT = cfg.s3.endpoint;
      NIKS3_S3_BUCKET = cfg.s3.bucket;
      NIKS3_S3_REGION = cfg.s3.region;
      NIKS3_S3_USE_SSL = lib.boolToString cfg.s3.useSSL;
      NIKS3_S3_ACCESS_KEY_FILE = "%d/s3-access-key";
      NIKS3_S3_SECRET_KEY_FILE = "%d/s3-secret-key";
    }
    // optionalAttrs (cfg.signKeyFiles != [ ]) {
      NIKS3_SIGN_KEY_PATHS = concatStringsSep ":" (map (c: "%d/${c.name}") signKeyCreds);
    }
    // optionalAttrs (cfg.apiTokenFile != null) { NIKS3_API_TOKEN_FILE = "%d/api-token"; }
    // optionalAttrs (cacheUrl != null) { NIKS3_CACHE_URL = cacheUrl; }
    // optionalAttrs (cfg.jobs != null) { NIKS3_JOBS = toString cfg.jobs; }
    // { NIKS3_COMPRESSION_LEVEL = toString cfg.compressionLevel; }
    // cfg.environment;

  serverCredentials =
    optional (cfg.apiTokenFile != null) "api-token:${cfg.apiTokenFile}"
    ++ optionals useS3 [
      "s3-access-key:${cfg.s3.accessKeyFile}"
      "s3-secret-key:${cfg.s3.secretKeyFile}"
    ]
    ++ optional (!cfg.database.createLocally && cfg.database.urlFile != null) "db-url:${cfg.database.urlFile}"
    ++ map (c: "${c.name}:${c.path}") signKeyCreds;

  # A remote server drains this machine's spool, so the local server (if any) must not race it.
  localSpool = !(hookCfg.enable && hookCfg.serverUrl != null);

  serverArgs =
    [ "serve" "--priority" (toString cfg.priority) ]
    ++ optional (!localSpool) "--no-spool"
    ++ cfg.extraArgs;

  hookWrapper = pkgs.writeShellScript "niks3-post-build-hook" ''
    # Installed as Nix's post-build-hook by services.niks3.hook. niks3-hook never fails a build: it
    # queues the outputs to the spool in well under a millisecond and always exits 0.
    export NIKS3_SPOOL_DIR=${escapeShellArg hookCfg.spoolDir}
    export NIKS3_GCROOTS_DIR=${escapeShellArg hookCfg.gcrootsDir}
    export NIKS3_NIX_STORE_DIR=${escapeShellArg builtins.storeDir}
    exec ${hookCfg.package}/bin/niks3-hook
  '';

  spoolRules = dir:
    map (d: "d ${d} 0750 ${user} ${group} - -")
      ([ dir ] ++ map (sub: "${dir}/${sub}") [ "tmp" "new" "claimed" "quarantine" ]);

  # What the server and the drainer share: both read path metadata through nix-daemon, and both empty
  # the spool and its GC roots (`extra*` adds what only one of them needs).
  spoolUnit = { extraAfter ? [ ], extraRequires ? [ ] }: {
    documentation = [ "https://github.com/niks3/niks3/blob/main/docs/nixos.md" ];
    wantedBy = [ "multi-user.target" ];
    wants = [ "network-online.target" ];
    after = [ "network-online.target" "nix-daemon.socket" ] ++ extraAfter;
    requires = [ "nix-daemon.socket" ] ++ extraRequires;
    path = [ nixPackage ];
  };
  spoolServiceConfig = { extraWritable ? [ ] }: hardening // {
    StateDirectory = "niks3";
    StateDirectoryMode = "0750";
    ReadWritePaths = [ hookCfg.gcrootsDir ]
      ++ optional (outsideState hookCfg.spoolDir) hookCfg.spoolDir
      ++ extraWritable;
  };

  # A client command (`niks3 gc`, `niks3 drain`) that presents the API token from `tokenFile`, handed
  # over by systemd as the credential `api-token`.
  tokenClient = { command, server, tokenFile, args }: {
    LoadCredential = optional (tokenFile != null) "api-token:${tokenFile}";
    ExecStart = concatStringsSep " " ([
      "${cfg.package}/bin/niks3 ${command}"
      "--server ${server}"
      "--auth-token-file \${CREDENTIALS_DIRECTORY}/api-token"
    ] ++ args);
  };
in
{
  options.services.niks3 = {
    enable = mkEnableOption "the niks3 binary cache server (`niks3 serve`)";

    package = mkPackageOption pkgs "niks3" { };

    httpAddr = mkOption {
      type = types.strMatching ".*:[0-9]+";
      default = "127.0.0.1:5751";
      example = ":5751";
      description = ''
        Address of the read proxy (a binary cache for stock Nix), the push API, /health and /metrics.
        `:5751` means all interfaces. Keep the default behind nginx.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port of httpAddr (or 80 and 443 when nginx is enabled) in the firewall.";
    };

    cacheUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://cache.example.org";
      defaultText = literalExpression ''"https://''${nginx.domain}" when nginx is enabled, else http://<httpAddr>'';
      description = "Public substituter URL shown on the landing page and in the printed nix.conf lines.";
    };

    priority = mkOption {
      type = types.ints.unsigned;
      default = 30;
      description = "`Priority` advertised in nix-cache-info (lower is preferred; cache.nixos.org is 40).";
    };

    jobs = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Parallel uploads; null means one per CPU core.";
    };

    compressionLevel = mkOption {
      type = types.ints.between 1 9;
      default = 3;
      description = ''
        zstd level of the NARs uploaded by the server's own spool and by this builder's niks3-drain
        (hook.serverUrl set). 3 is Nix's own; 2 takes about a third less CPU for about 5% more bytes.
      '';
    };

    storeDir = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/srv/niks3-cache";
      description = ''
        Local object directory (small setups, no S3). When neither this nor s3.* is set, objects go to
        ${stateDir}/cache. The read proxy serves it.
      '';
    };

    s3 = {
      endpoint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://<account>.r2.cloudflarestorage.com";
        description = "S3 endpoint; without a scheme, useSSL decides http or https. All s3.* or none.";
      };
      bucket = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "S3 bucket holding the cache.";
      };
      region = mkOption {
        type = types.str;
        default = "us-east-1";
        example = "auto";
        description = "S3 region (`auto` for Cloudflare R2; Garage's `s3_region`).";
      };
      useSSL = mkOption {
        type = types.bool;
        default = true;
        description = "Use https when the endpoint has no scheme.";
      };
      accessKeyFile = secretFileOption "s3-access-key"
        "File holding the S3 access key id (runtime path, never in the Nix store).";
      secretKeyFile = secretFileOption "s3-secret-key"
        "File holding the S3 secret key (runtime path, never in the Nix store).";
    };

    database = {
      createLocally = mkOption {
        type = types.bool;
        default = cfg.database.urlFile == null;
        defaultText = literalExpression "config.services.niks3.database.urlFile == null";
        description = ''
          Create database and role `niks3` in this machine's services.postgresql and connect over the
          unix socket with peer authentication (`host=/run/postgresql user=niks3 dbname=niks3`).
        '';
      };
      urlFile = secretFileOption "db-url" ''
        File holding a libpq connection string (`postgresql://user:pass@host/db` or
        `host=… user=… dbname=…`), for a managed or remote PostgreSQL.
      '';
    };

    apiTokenFile = secretFileOption "api-token" ''
      File holding the seed API token (at least 36 characters): an `admin` token, allowed everything,
      including GC below the API's floors. Give builders and CI `push` tokens and the GC timer a `gc`
      token instead (`niks3 token create`, see hook.tokenFile and gc.tokenFile). null: the server
      generates ${stateDir}/api-token on first start (not allowed with nginx on a public domain).
    '';

    signKeyFiles = mkOption {
      type = types.listOf secretPath;
      default = [ ];
      example = [ "/run/secrets/niks3/cache-1.sec" ];
      description = ''
        Secret signing keys (`name:base64`, as `nix key generate-secret` or `niks3 key generate` write
        them); every narinfo gets one Sig line per key. Empty requires generateSignKey.
      '';
    };

    generateSignKey = mkOption {
      type = types.bool;
      default = false;
      description = ''
        With no signKeyFiles, let the server generate ${stateDir}/keys/<hostname>-1.sec on first start
        (its public key is printed in the journal and on the landing page). Losing the state directory
        then means a new key that every client must trust again.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--s3-path-style=false" ];
      description = "Extra arguments to `niks3 serve`.";
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { RUST_LOG = "niks3=debug"; };
      description = "Extra environment for `niks3 serve` (no secrets: units are world-readable).";
    };

    nginx = {
      enable = mkEnableOption "an nginx virtual host proxying to httpAddr";
      domain = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "cache.example.org";
        description = "Domain of the nginx virtual host.";
      };
      enableACME = mkOption {
        type = types.bool;
        default = true;
        description = "Get a certificate for the domain with ACME (security.acme must be configured).";
      };
      forceSSL = mkOption {
        type = types.bool;
        default = true;
        description = "Redirect http to https.";
      };
    };

    gc = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run `niks3 gc` periodically (niks3-gc.timer → niks3-gc.service).";
      };
      olderThan = mkOption {
        type = duration;
        default = "720h";
        description = "Forget closures last pushed longer ago than this (Go duration: 720h, 30d, 1h30m).";
      };
      failedUploadsOlderThan = mkOption {
        type = duration;
        default = "6h";
        description = "Abort uploads in flight for longer than this; also the grace period before deletion.";
      };
      schedule = mkOption {
        type = types.str;
        default = "daily";
        example = "*-*-* 03:00:00";
        description = "When to collect (systemd OnCalendar syntax).";
      };
      randomizedDelaySec = mkOption {
        type = types.ints.unsigned;
        default = 1800;
        description = "Random delay added to each run (RandomizedDelaySec), in seconds.";
      };
      tokenFile = secretFileOption "gc-token" ''
        File holding a token with the `gc` scope for the GC timer (`niks3 token create --name gc-timer
        --scope gc`): it can collect what is older than the API's floors (1 h) but cannot push or wipe
        the cache. null: the timer uses the admin token (apiTokenFile, or the generated one).
      '';
    };

    hook = {
      enable = mkEnableOption ''
        the builders' side: Nix's post-build-hook queues every locally built path to the niks3 spool,
        drained by the local server (serverUrl = null) or pushed to serverUrl by niks3-drain.service
      '';
      package = mkPackageOption pkgs "niks3-hook" { };
      spoolDir = mkOption {
        type = types.str;
        default = "${stateDir}/spool";
        description = "The durable queue the hook writes and the drainer empties.";
      };
      gcrootsDir = mkOption {
        type = types.str;
        default = "/nix/var/nix/gcroots/niks3";
        description = "GC roots keeping queued paths alive in the local store until they are uploaded.";
      };
      serverUrl = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://cache.example.org";
        description = "Remote niks3 server to push to; null means the local services.niks3 drains the spool.";
      };
      tokenFile = secretFileOption "push-token" ''
        File holding a token with the `push` scope for the remote server (required with serverUrl):
        on the server, `niks3 token create --name <this host> --scope push`, one per builder, so each
        can be revoked on its own (`niks3 token revoke <this host>`).
      '';
      wrapper = mkOption {
        type = types.package;
        readOnly = true;
        default = hookWrapper;
        defaultText = literalExpression "pkgs.writeShellScript \"niks3-post-build-hook\" …";
        description = ''
          The script installed as nix.settings.post-build-hook (read-only). To run another hook too,
          set post-build-hook with lib.mkForce to your own script ending in `exec ''${wrapper}`.
        '';
      };
    };
  };

  config = mkMerge [
    {
      assertions = [
        {
          assertion = badSecrets == { };
          message = "services.niks3: secrets must be absolute runtime paths outside ${builtins.storeDir} "
            + "(the store is world-readable; use e.g. a sops-nix path under /run/secrets): "
            + concatStringsSep ", " (lib.mapAttrsToList (n: v: "${n} = ${v}") badSecrets);
        }
      ];
    }

    # Shared by both roles: the user the server and the drainer run as, and the directories the
    # nix-daemon's hook writes into, created with their final owner before any hook or service runs.
    (mkIf (cfg.enable || hookCfg.enable) {
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
      ++ spoolRules hookCfg.spoolDir
      ++ optional (cfg.enable && cfg.storeDir != null) "d ${cfg.storeDir} 0750 ${user} ${group} - -";
    })

    (mkIf cfg.enable {
      assertions = [
        {
          assertion = s3Missing == [ ] || s3Set == [ ];
          message = "services.niks3.s3: endpoint, bucket, accessKeyFile and secretKeyFile are all or "
            + "nothing; set: ${concatStringsSep ", " s3Set}; missing: ${concatStringsSep ", " s3Missing}.";
        }
        {
          assertion = !(anyS3 && cfg.storeDir != null);
          message = "services.niks3: storeDir and s3.* are two stores; set only one of them.";
        }
        {
          assertion = !(cfg.database.createLocally && cfg.database.urlFile != null);
          message = "services.niks3.database: createLocally = true and urlFile are two databases; "
            + "set createLocally = false to use the connection string from urlFile.";
        }
        {
          assertion = cfg.database.createLocally || cfg.database.urlFile != null;
          message = "services.niks3.database: set urlFile (a file with a connection string) or "
            + "createLocally = true (a local services.postgresql database).";
        }
        {
          assertion = cfg.signKeyFiles != [ ] || cfg.generateSignKey;
          message = "services.niks3: signKeyFiles is empty; add a secret key file (`niks3 key generate "
            + "--name cache-1 --secret-out cache-1.sec --public-out cache-1.pub`, kept in sops-nix) or set "
            + "generateSignKey = true to let the server create ${stateDir}/keys/<hostname>-1.sec.";
        }
        {
          assertion = !cfg.nginx.enable || cfg.nginx.domain != null;
          message = "services.niks3.nginx.enable needs services.niks3.nginx.domain.";
        }
        {
          assertion = !cfg.nginx.enable || cfg.apiTokenFile != null;
          message = "services.niks3: nginx publishes the push API on ${toString cfg.nginx.domain}; set "
            + "apiTokenFile (a secret of at least 36 characters, e.g. `openssl rand -hex 32`) instead of "
            + "relying on a token generated into the state directory.";
        }
      ];
      warnings =
        optional (cfg.generateSignKey && cfg.signKeyFiles != [ ])
          "services.niks3.generateSignKey is ignored because signKeyFiles is set."
        ++ optional (!isLoopback && !cfg.nginx.enable && cfg.apiTokenFile == null)
          ("services.niks3.httpAddr ${cfg.httpAddr} is reachable from the network and apiTokenFile is "
            + "null: the push API token is generated into ${stateDir}/api-token; copy it to your builders.");

      services.postgresql = mkIf cfg.database.createLocally {
        enable = true;
        ensureDatabases = [ "niks3" ];
        ensureUsers = [{ name = user; ensureDBOwnership = true; }];
      };

      systemd.services.niks3 = spoolUnit {
        # postgresql-setup.service / postgresql.target: where newer NixOS runs ensureUsers; ordering
        # after a unit that does not exist is a no-op, so this works across releases.
        extraAfter = optionals cfg.database.createLocally
          [ "postgresql.service" "postgresql-setup.service" "postgresql.target" ];
        extraRequires = optional cfg.database.createLocally "postgresql.service";
      } // {
        description = "niks3 binary cache server";
        environment = serverEnv;
        serviceConfig = spoolServiceConfig {
          extraWritable = optional (cfg.storeDir != null && outsideState cfg.storeDir) cfg.storeDir;
        } // {
          Type = "notify";
          ExecStart = "${cfg.package}/bin/niks3 ${escapeShellArgs serverArgs}";
          Restart = "on-failure";
          RestartSec = "5s";
          # Let in-flight uploads finish; claimed entries are re-processed on the next start anyway.
          TimeoutStopSec = "60s";
          WorkingDirectory = stateDir;
          LoadCredential = serverCredentials;
          LimitNOFILE = 65536;
        } // optionalAttrs (addrPort < 1024) {
          CapabilityBoundingSet = "CAP_NET_BIND_SERVICE";
          AmbientCapabilities = "CAP_NET_BIND_SERVICE";
        };
      };

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall
        (if cfg.nginx.enable then [ 80 443 ] else [ addrPort ]);

      services.nginx = mkIf (cfg.nginx.enable && cfg.nginx.domain != null) {
        enable = true;
        recommendedProxySettings = mkDefault true;
        virtualHosts.${cfg.nginx.domain} = {
          inherit (cfg.nginx) enableACME forceSSL;
          locations."/" = {
            proxyPass = localUrl;
          };
          # Pushes stream NARs through the API: no size limit, no buffering to disk.
          locations."/api/" = {
            proxyPass = localUrl;
            extraConfig = ''
              client_max_body_size 0;
              proxy_request_buffering off;
              proxy_read_timeout 1h;
              proxy_send_timeout 1h;
            '';
          };
        };
      };
    })

    (mkIf (cfg.enable && cfg.gc.enable) {
      systemd.services.niks3-gc = {
        description = "niks3 garbage collection";
        documentation = [ "https://github.com/niks3/niks3/blob/main/docs/nixos.md#reading-the-gc-output" ];
        wants = [ "niks3.service" ];
        after = [ "niks3.service" ];
        serviceConfig = hardening // {
          Type = "oneshot";
        } // tokenClient {
          command = "gc";
          server = localUrl;
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
    })

    (mkIf hookCfg.enable {
      assertions = [
        {
          assertion = hookCfg.serverUrl != null || cfg.enable;
          message = "services.niks3.hook: serverUrl is null, which means the local server drains the "
            + "spool, but services.niks3.enable is false; set hook.serverUrl and hook.tokenFile to push "
            + "to a remote niks3, or enable the server on this machine.";
        }
        {
          assertion = hookCfg.serverUrl == null || hookCfg.tokenFile != null;
          message = "services.niks3.hook: serverUrl = ${toString hookCfg.serverUrl} needs hook.tokenFile "
            + "(a push token: `niks3 token create --name <host> --scope push` on the server).";
        }
      ];
      warnings = optional (hookCfg.serverUrl == null && hookCfg.tokenFile != null)
        "services.niks3.hook.tokenFile is unused: serverUrl is null, so the local server drains the spool.";

      nix.settings.post-build-hook = "${hookWrapper}";
    })

    (mkIf (hookCfg.enable && hookCfg.serverUrl != null) {
      systemd.services.niks3-drain = spoolUnit { } // {
        description = "niks3 drain: push this builder's spool to ${hookCfg.serverUrl}";
        environment.NIX_REMOTE = "daemon";
        serviceConfig = spoolServiceConfig { } // {
          # The drainer retries with backoff itself; this only covers crashes.
          Restart = "always";
          RestartSec = "10s";
        } // tokenClient {
          command = "drain";
          server = escapeShellArg hookCfg.serverUrl;
          inherit (hookCfg) tokenFile;
          args = [
            "--spool-dir ${escapeShellArg hookCfg.spoolDir}"
            "--gcroots-dir ${escapeShellArg hookCfg.gcrootsDir}"
            "--compression-level ${toString cfg.compressionLevel}"
          ];
        };
      };
    })
  ];
}
