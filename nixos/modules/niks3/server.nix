# The cache server (`niks3 serve`, niks3.service): PostgreSQL bookkeeping, S3 or a local object
# directory, signing keys, the read proxy and push API on httpAddr.
#
# Configuration reaches the server as NIKS3_* environment variables. `settings` (RFC 42) holds them as
# an attribute set, key `http_addr` for NIKS3_HTTP_ADDR: the typed options below (httpAddr, priority,
# jobs, compressionLevel, storageDir, cacheUrl, s3.*) set their entries, and any other variable of
# `niks3 serve --help` can be added there. Secrets never go through settings: the options naming secret
# files hand them over with LoadCredential, and settings refuses the keys of secrets and of what the
# module derives itself.
args@{ config, lib, ... }:
let
  inherit (lib)
    optionals
    optionalAttrs
    concatStringsSep
    imap0
    escapeShellArgs
    literalExpression
    ;

  cfg = config.services.niks3;
  hookCfg = cfg.hook;
  common = import ./lib.nix args;
  inherit (common)
    user
    group
    stateDir
    secretPath
    secretFileOption
    ;

  s3Fields = {
    inherit (cfg.s3)
      endpoint
      bucket
      accessKeyFile
      secretKeyFile
      ;
  };
  s3Set = lib.attrNames (lib.filterAttrs (_: v: v != null) s3Fields);
  s3Missing = lib.attrNames (lib.filterAttrs (_: v: v == null) s3Fields);
  # Some s3.* set (for the assertions) / all of them set (what the service gets).
  anyS3 = s3Set != [ ];
  useS3 = s3Missing == [ ];

  publicScheme = if cfg.nginx.forceSSL || cfg.nginx.enableACME then "https" else "http";
  cacheUrl =
    if cfg.cacheUrl != null then
      cfg.cacheUrl
    else if cfg.nginx.enable && cfg.nginx.domain != null then
      "${publicScheme}://${cfg.nginx.domain}"
    else
      null;

  storageDir = cfg.settings.storage_dir;

  # settings keys the module sets from other options (or that name secrets): a definition in settings
  # would bypass the credential mechanism or contradict the units, so it is refused, naming the option
  # to use instead.
  managedSettings = {
    state_dir = "the state directory is ${stateDir} (StateDirectory=niks3)";
    spool_dir = "services.niks3.hook.spoolDir";
    gcroots_dir = "services.niks3.hook.gcrootsDir";
    no_spool = "services.niks3.hook.serverUrl (the local server drains the spool unless it is set)";
    db = "services.niks3.database";
    db_file = "services.niks3.database.urlFile";
    api_token = "services.niks3.apiTokenFile";
    api_token_file = "services.niks3.apiTokenFile";
    s3_access_key = "services.niks3.s3.accessKeyFile";
    s3_access_key_file = "services.niks3.s3.accessKeyFile";
    s3_secret_key = "services.niks3.s3.secretKeyFile";
    s3_secret_key_file = "services.niks3.s3.secretKeyFile";
    sign_key_paths = "services.niks3.signKeyFiles";
  };
  badSettings = lib.filterAttrs (n: v: managedSettings ? ${n} && v != null) cfg.settings;
  badSettingNames = builtins.filter (n: builtins.match "[a-z0-9_]+" n == null) (
    lib.attrNames cfg.settings
  );

  # settings entries that are command-line arguments rather than environment (an argument would
  # override the variable).
  argumentSettings = [ "priority" ];

  renderSetting =
    v:
    if builtins.isBool v then
      lib.boolToString v
    else if builtins.isPath v then
      "${v}"
    else
      toString v;
  settingsEnv = lib.mapAttrs' (n: v: lib.nameValuePair "NIKS3_${lib.toUpper n}" (renderSetting v)) (
    lib.filterAttrs (n: v: v != null && !(builtins.elem n argumentSettings)) cfg.settings
  );

  signKeyCreds = imap0 (i: f: {
    name = "sign-key-${toString i}";
    path = f;
  }) cfg.signKeyFiles;

  serverEnv = {
    NIKS3_STATE_DIR = stateDir;
    NIKS3_SPOOL_DIR = hookCfg.spoolDir;
    NIKS3_GCROOTS_DIR = hookCfg.gcrootsDir;
    # The daemon is not root: it reads the Nix database through nix-daemon.
    NIX_REMOTE = "daemon";
  }
  // (
    if cfg.database.createLocally then
      {
        # Peer authentication over the unix socket: the unix user niks3 is the PostgreSQL role niks3.
        NIKS3_DB = "host=/run/postgresql user=${user} dbname=niks3";
      }
    else
      optionalAttrs (cfg.database.urlFile != null) {
        NIKS3_DB_FILE = "%d/db-url";
      }
  )
  // optionalAttrs useS3 {
    NIKS3_S3_ACCESS_KEY_FILE = "%d/s3-access-key";
    NIKS3_S3_SECRET_KEY_FILE = "%d/s3-secret-key";
  }
  // optionalAttrs (cfg.signKeyFiles != [ ]) {
    NIKS3_SIGN_KEY_PATHS = concatStringsSep ":" (map (c: "%d/${c.name}") signKeyCreds);
  }
  // optionalAttrs (cfg.apiTokenFile != null) { NIKS3_API_TOKEN_FILE = "%d/api-token"; }
  // settingsEnv
  // cfg.environment;

  serverCredentials =
    lib.optional (cfg.apiTokenFile != null) "api-token:${cfg.apiTokenFile}"
    ++ optionals useS3 [
      "s3-access-key:${cfg.s3.accessKeyFile}"
      "s3-secret-key:${cfg.s3.secretKeyFile}"
    ]
    ++ lib.optional (
      !cfg.database.createLocally && cfg.database.urlFile != null
    ) "db-url:${cfg.database.urlFile}"
    ++ map (c: "${c.name}:${c.path}") signKeyCreds;

  # A remote server drains this machine's spool, so the local server (if any) must not race it.
  localSpool = !(hookCfg.enable && hookCfg.serverUrl != null);

  serverArgs = [
    "serve"
    "--priority"
    (toString cfg.settings.priority)
  ]
  ++ lib.optional (!localSpool) "--no-spool"
  ++ cfg.extraArgs;
in
{
  imports = [
    (lib.mkRenamedOptionModule [ "services" "niks3" "storeDir" ] [ "services" "niks3" "storageDir" ])
  ];

  options.services.niks3 = {
    enable = lib.mkEnableOption "the niks3 binary cache server (`niks3 serve`)";

    httpAddr = lib.mkOption {
      type = common.listenAddress;
      default = "127.0.0.1:5751";
      example = ":5751";
      description = ''
        Address of the read proxy (a binary cache for stock Nix), the push API, /health and /metrics.
        `:5751` means all interfaces. Keep the default behind nginx. Sets settings.http_addr.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the port of httpAddr (or 80 and 443 when nginx is enabled) in the firewall.";
    };

    cacheUrl = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "https://cache.example.org";
      defaultText = literalExpression ''"https://''${nginx.domain}" when nginx is enabled, else http://<httpAddr>'';
      description = "Public substituter URL shown on the landing page and in the printed nix.conf lines.";
    };

    private = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        A private cache: reading it (narinfos, NARs, logs, nix-cache-info, /metrics) needs a token with
        the `read` scope (`niks3 token create --name <client> --scope read`), which Nix sends from its
        netrc-file (`machine <host>`, `login nix`, `password <token>`; nix.settings.netrc-file). The
        landing page and /health stay open and show nothing secret.
      '';
    };

    oidcConfigFile = lib.mkOption {
      type = lib.types.nullOr (lib.types.either lib.types.path lib.types.str);
      default = null;
      example = literalExpression "./niks3-oidc.toml";
      description = ''
        OIDC: a TOML or JSON file (told apart by its extension) of the OpenID issuers whose JWTs may be
        used as API tokens (issuer URL, audience) and the rules mapping their claims to scopes, so CI jobs
        (GitHub Actions, GitLab, Kubernetes) push without a stored secret; see docs/api.md "OIDC". It holds
        no secret: a path (copied to the store) or a string naming a file on the machine, passed as
        NIKS3_OIDC_CONFIG.
      '';
    };

    priority = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 30;
      description = "`Priority` advertised in nix-cache-info (lower is preferred; cache.nixos.org is 40).";
    };

    jobs = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.positive;
      default = null;
      description = "Parallel uploads; null means one per CPU core.";
    };

    compressionLevel = lib.mkOption {
      type = lib.types.ints.between 1 9;
      default = 3;
      description = ''
        zstd level of the NARs uploaded by the server's own spool and by this builder's niks3-drain
        (hook.serverUrl set). 3 is Nix's own; 2 takes about a third less CPU for about 5% more bytes.
      '';
    };

    maxNarSize = lib.mkOption {
      type = lib.types.nullOr common.byteSize;
      default = null;
      example = "8G";
      description = ''
        Paths whose NAR is larger than this are not cached (`--max-nar-size`, for the server's spool,
        the pushes it accepts, and this builder's niks3-drain): each is skipped with one log line and
        counted in `niks3_paths_skipped_total`; its referrers are still cached and name it, so clients
        substitute or build the skipped path elsewhere. null: no limit.
      '';
    };

    storageDir = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/srv/niks3-cache";
      description = ''
        Local object directory (small setups, no S3). When neither this nor s3.* is set, objects go to
        ${stateDir}/cache. The read proxy serves it. Formerly `storeDir` (still accepted, with a
        warning): this is object storage, not a Nix store.
      '';
    };

    s3 = {
      endpoint = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "https://<account>.r2.cloudflarestorage.com";
        description = "S3 endpoint; without a scheme, useSSL decides http or https. All s3.* or none.";
      };
      bucket = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        description = "S3 bucket holding the cache.";
      };
      region = lib.mkOption {
        type = lib.types.str;
        default = "us-east-1";
        example = "auto";
        description = "S3 region (`auto` for Cloudflare R2; Garage's `s3_region`).";
      };
      useSSL = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = "Use https when the endpoint has no scheme.";
      };
      accessKeyFile = secretFileOption "s3-access-key" "File holding the S3 access key id (runtime path, never in the Nix store).";
      secretKeyFile = secretFileOption "s3-secret-key" "File holding the S3 secret key (runtime path, never in the Nix store).";
    };

    database = {
      createLocally = lib.mkOption {
        type = lib.types.bool;
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

    signKeyFiles = lib.mkOption {
      type = lib.types.listOf secretPath;
      default = [ ];
      example = [ "/run/secrets/niks3/cache-1.sec" ];
      description = ''
        Secret signing keys (`name:base64`, as `nix key generate-secret` or `niks3 key generate` write
        them); every narinfo gets one Sig line per key. Empty requires generateSignKey.
      '';
    };

    generateSignKey = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        With no signKeyFiles, let the server generate ${stateDir}/keys/<hostname>-1.sec on first start
        (its public key is printed in the journal and on the landing page). Losing the state directory
        then means a new key that every client must trust again.
      '';
    };

    settings = lib.mkOption {
      type = lib.types.submodule {
        freeformType = lib.types.attrsOf (
          lib.types.nullOr (
            lib.types.oneOf [
              lib.types.bool
              lib.types.int
              lib.types.str
              lib.types.path
            ]
          )
        );
        options = {
          http_addr = lib.mkOption {
            type = common.listenAddress;
            default = cfg.httpAddr;
            defaultText = literalExpression "config.services.niks3.httpAddr";
            description = "NIKS3_HTTP_ADDR: the server's listen address (see httpAddr).";
          };
          priority = lib.mkOption {
            type = lib.types.ints.unsigned;
            default = cfg.priority;
            defaultText = literalExpression "config.services.niks3.priority";
            description = "nix-cache-info `Priority`, passed as `--priority` (see priority).";
          };
          jobs = lib.mkOption {
            type = lib.types.nullOr lib.types.ints.positive;
            default = cfg.jobs;
            defaultText = literalExpression "config.services.niks3.jobs";
            description = "NIKS3_JOBS: parallel uploads, null for one per core (see jobs).";
          };
          compression_level = lib.mkOption {
            type = lib.types.ints.between 1 9;
            default = cfg.compressionLevel;
            defaultText = literalExpression "config.services.niks3.compressionLevel";
            description = "NIKS3_COMPRESSION_LEVEL: the server's zstd level (see compressionLevel).";
          };
          max_nar_size = lib.mkOption {
            type = lib.types.nullOr common.byteSize;
            default = cfg.maxNarSize;
            defaultText = literalExpression "config.services.niks3.maxNarSize";
            description = "NIKS3_MAX_NAR_SIZE: paths with a larger NAR are not cached (see maxNarSize).";
          };
          storage_dir = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = cfg.storageDir;
            defaultText = literalExpression "config.services.niks3.storageDir";
            description = "NIKS3_STORAGE_DIR: the local object directory (see storageDir).";
          };
          oidc_config = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = if cfg.oidcConfigFile == null then null else "${cfg.oidcConfigFile}";
            defaultText = literalExpression "config.services.niks3.oidcConfigFile";
            description = "NIKS3_OIDC_CONFIG: the trusted OIDC issuers and their rules (see oidcConfigFile).";
          };
          private = lib.mkOption {
            type = lib.types.bool;
            default = cfg.private;
            defaultText = literalExpression "config.services.niks3.private";
            description = "NIKS3_PRIVATE: reading the cache needs a read token (see private).";
          };
          cache_url = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = cacheUrl;
            defaultText = literalExpression "config.services.niks3.cacheUrl, else https://<nginx.domain>";
            description = "NIKS3_CACHE_URL: the public substituter URL (see cacheUrl).";
          };
        };
      };
      default = { };
      example = {
        http_addr = "[::]:5751";
        s3_path_style = false;
        nix_store_dir = "/nix/store";
      };
      description = ''
        Environment of `niks3 serve` as an attribute set (RFC 42): each non-null entry becomes
        NIKS3_<KEY> (`http_addr` → NIKS3_HTTP_ADDR); booleans render as true/false, integers and paths
        as strings. The typed options set their entries (httpAddr, priority, jobs, compressionLevel,
        maxNarSize, storageDir, cacheUrl, and s3.endpoint/bucket/region/useSSL when all of s3.* is set); any other
        variable of `niks3 serve --help` can be added. Keys naming secrets or what the module sets from
        other options (state_dir, spool_dir, gcroots_dir, no_spool, db, db_file, api_token(_file),
        s3_access_key(_file), s3_secret_key(_file), sign_key_paths) are refused: units are
        world-readable, secrets go through the *File options.
      '';
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "--s3-path-style=false" ];
      description = "Extra arguments to `niks3 serve`.";
    };

    environment = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      default = { };
      example = {
        RUST_LOG = "niks3=debug";
      };
      description = "Extra environment for `niks3 serve` (no secrets: units are world-readable).";
    };
  };

  config = lib.mkMerge [
    # The S3 backend's non-secret settings, once all of s3.* is set (the keys go through credentials).
    (lib.mkIf useS3 {
      services.niks3.settings = {
        s3_endpoint = lib.mkDefault cfg.s3.endpoint;
        s3_bucket = lib.mkDefault cfg.s3.bucket;
        s3_region = lib.mkDefault cfg.s3.region;
        s3_use_ssl = lib.mkDefault cfg.s3.useSSL;
      };
    })

    (lib.mkIf cfg.enable {
      assertions = [
        {
          assertion =
            cfg.settings.oidc_config == null
            || lib.hasSuffix ".toml" cfg.settings.oidc_config
            || lib.hasSuffix ".json" cfg.settings.oidc_config;
          message =
            "services.niks3.oidcConfigFile ${toString cfg.settings.oidc_config} must end in .toml or .json "
            + "(niks3 tells the format by the extension).";
        }
        {
          assertion = s3Missing == [ ] || s3Set == [ ];
          message =
            "services.niks3.s3: endpoint, bucket, accessKeyFile and secretKeyFile are all or "
            + "nothing; set: ${concatStringsSep ", " s3Set}; missing: ${concatStringsSep ", " s3Missing}.";
        }
        {
          assertion = !(anyS3 && storageDir != null);
          message = "services.niks3: storageDir and s3.* are two stores; set only one of them.";
        }
        {
          assertion = !(cfg.database.createLocally && cfg.database.urlFile != null);
          message =
            "services.niks3.database: createLocally = true and urlFile are two databases; "
            + "set createLocally = false to use the connection string from urlFile.";
        }
        {
          assertion = cfg.database.createLocally || cfg.database.urlFile != null;
          message =
            "services.niks3.database: set urlFile (a file with a connection string) or "
            + "createLocally = true (a local services.postgresql database).";
        }
        {
          assertion = cfg.signKeyFiles != [ ] || cfg.generateSignKey;
          message =
            "services.niks3: signKeyFiles is empty; add a secret key file (`niks3 key generate "
            + "--name cache-1 --secret-out cache-1.sec --public-out cache-1.pub`, kept in sops-nix) or set "
            + "generateSignKey = true to let the server create ${stateDir}/keys/<hostname>-1.sec.";
        }
        {
          assertion = badSettings == { };
          message =
            "services.niks3.settings: "
            + concatStringsSep "; " (
              lib.mapAttrsToList (n: _: "${n} is not a setting (set ${managedSettings.${n}})") badSettings
            )
            + ". Secrets never go into the unit's environment: the *File options hand them over as credentials.";
        }
        {
          assertion = badSettingNames == [ ];
          message =
            "services.niks3.settings: keys are the lower-case names of NIKS3_* variables "
            + "(http_addr for NIKS3_HTTP_ADDR); not: ${concatStringsSep ", " badSettingNames}.";
        }
      ];
      warnings =
        lib.optional (
          cfg.generateSignKey && cfg.signKeyFiles != [ ]
        ) "services.niks3.generateSignKey is ignored because signKeyFiles is set."
        ++ lib.optional (!common.isLoopback && !cfg.nginx.enable && cfg.apiTokenFile == null) (
          "services.niks3.httpAddr ${common.httpAddr} is reachable from the network and apiTokenFile is "
          + "null: the push API token is generated into ${stateDir}/api-token; copy it to your builders."
        );

      services.postgresql = lib.mkIf cfg.database.createLocally {
        enable = true;
        ensureDatabases = [ "niks3" ];
        ensureUsers = [
          {
            name = user;
            ensureDBOwnership = true;
          }
        ];
      };

      systemd.services.niks3 =
        common.spoolUnit {
          # postgresql-setup.service / postgresql.target: where newer NixOS runs ensureUsers; ordering
          # after a unit that does not exist is a no-op, so this works across releases.
          extraAfter = optionals cfg.database.createLocally [
            "postgresql.service"
            "postgresql-setup.service"
            "postgresql.target"
          ];
          extraRequires = lib.optional cfg.database.createLocally "postgresql.service";
        }
        // {
          description = "niks3 binary cache server";
          environment = serverEnv;
          serviceConfig =
            common.spoolServiceConfig {
              extraWritable = lib.optional (storageDir != null && common.outsideState storageDir) storageDir;
            }
            // {
              Type = "notify";
              ExecStart = "${cfg.package}/bin/niks3 ${escapeShellArgs serverArgs}";
              Restart = "on-failure";
              RestartSec = "5s";
              # Let in-flight uploads finish; claimed entries are re-processed on the next start anyway.
              TimeoutStopSec = "60s";
              WorkingDirectory = stateDir;
              LoadCredential = serverCredentials;
              LimitNOFILE = 65536;
            }
            // optionalAttrs (common.addrPort < 1024) {
              CapabilityBoundingSet = "CAP_NET_BIND_SERVICE";
              AmbientCapabilities = "CAP_NET_BIND_SERVICE";
              PrivateUsers = false;
            };
        };

      networking.firewall.allowedTCPPorts = lib.mkIf (cfg.openFirewall && !cfg.nginx.enable) [
        common.addrPort
      ];
    })
  ];
}
