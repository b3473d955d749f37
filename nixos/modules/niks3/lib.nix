# What the niks3 role modules share: names, option lib.types, the systemd hardening and the unit skeletons.
# Not a module itself: each role file imports it with its own arguments,
#   common = import ./lib.nix args;   (args: the role module's arguments)
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.niks3;
  hookCfg = cfg.hook;
in
rec {
  user = "niks3";
  group = "niks3";
  stateDir = "/var/lib/niks3";

  # Go-style durations as `niks3 gc` parses them: 720h, 6h, 30m, 10s, 7d, 1h30m.
  duration = lib.types.strMatching "([0-9]+(ns|us|ms|s|m|h|d))+";

  # A listen address as `niks3 serve` takes it: `HOST:PORT`, or `:PORT` for all interfaces.
  listenAddress = lib.types.strMatching ".*:[0-9]+";
  # A byte count as `--max-nar-size` takes it: digits and an optional K, M, G or T (powers of 1024).
  byteSize = lib.types.strMatching "[0-9]+ ?([KMGTkmgt](i?B)?)?";

  # A runtime path to a secret; a string on purpose, so that a Nix path literal (which would be copied
  # into the world-readable store) is a type error.
  secretPath = lib.types.str;

  # An lib.optional secret file option; `example` is the file's name under /run/secrets/niks3 (sops-nix style).
  secretFileOption =
    example: description:
    lib.mkOption {
      type = lib.types.nullOr secretPath;
      default = null;
      example = "/run/secrets/niks3/${example}";
      inherit description;
    };

  # The server's listen address (settings.http_addr, which httpAddr sets) as a URL that local clients
  # (the GC service, nginx) can reach: the wildcard addresses and `:PORT` (all interfaces) become the
  # loopback address.
  httpAddr = cfg.settings.http_addr;
  addrParts = builtins.match "(.*):([0-9]+)" httpAddr;
  addrHost = if addrParts == null then "127.0.0.1" else builtins.elemAt addrParts 0;
  addrPort = if addrParts == null then 5751 else lib.toInt (builtins.elemAt addrParts 1);
  loopbackHost =
    if addrHost == "" || addrHost == "0.0.0.0" then
      "127.0.0.1"
    else if addrHost == "[::]" then
      "[::1]"
    else
      addrHost;
  localUrl = "http://${loopbackHost}:${toString addrPort}";
  isLoopback = builtins.elem addrHost [
    "127.0.0.1"
    "[::1]"
    "localhost"
  ];

  nixPackage = config.nix.package or pkgs.nix;

  # Directories outside the state directory that a service must be able to write despite
  # ProtectSystem=strict.
  outsideState = p: !(lib.hasPrefix "${stateDir}/" p);

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
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    RemoveIPC = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    # Other users' uids are unmapped inside the service (files of root, such as the store, stay
    # readable; nix-daemon and PostgreSQL still see the real niks3 uid on their sockets). server.nix
    # turns it off for a port below 1024: a capability inside a user namespace cannot bind it.
    PrivateUsers = true;
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
      # setrlimit, setpriority, sched_setaffinity & co.: nothing niks3 or its nix-daemon --stdio child
      # needs (checked under systemd by nixos/tests/systemd-vm).
      "~@resources"
    ];
    SystemCallErrorNumber = "EPERM";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
  };

  spoolRules =
    dir:
    map (d: "d ${d} 0750 ${user} ${group} - -") (
      [ dir ]
      ++ map (sub: "${dir}/${sub}") [
        "tmp"
        "new"
        "claimed"
        "quarantine"
      ]
    );

  # What the server and the drainer share: both read path metadata through nix-daemon, and both empty
  # the spool and its GC roots (`extra*` adds what only one of them needs).
  spoolUnit =
    {
      extraAfter ? [ ],
      extraRequires ? [ ],
    }:
    {
      documentation = [ "https://github.com/niks3/niks3/blob/main/docs/nixos.md" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "nix-daemon.socket"
      ]
      ++ extraAfter;
      requires = [ "nix-daemon.socket" ] ++ extraRequires;
      path = [ nixPackage ];
    };
  spoolServiceConfig =
    {
      extraWritable ? [ ],
    }:
    hardening
    // {
      StateDirectory = "niks3";
      StateDirectoryMode = "0750";
      ReadWritePaths = [
        hookCfg.gcrootsDir
      ]
      ++ lib.optional (outsideState hookCfg.spoolDir) hookCfg.spoolDir
      ++ extraWritable;
    };

  # A client command (`niks3 gc`, `niks3 drain`) that presents the API token from `tokenFile`, handed
  # over by systemd as the credential `api-token`.
  tokenClient =
    {
      command,
      servers,
      tokenFile,
      args,
    }:
    {
      LoadCredential = lib.optional (tokenFile != null) "api-token:${tokenFile}";
      ExecStart = lib.concatStringsSep " " (
        [ "${cfg.package}/bin/niks3 ${command}" ]
        ++ map (s: "--server ${lib.escapeShellArg s}") servers
        ++ [ "--auth-token-file \${CREDENTIALS_DIRECTORY}/api-token" ]
        ++ args
      );
    };
}
