# What NixOS would install for a configuration of the niks3 module, as files: evaluates the module with
# nixos/tests/evaluator (the real nixpkgs lib, stand-ins for the rest of NixOS) and turns what it
# configures into the files NixOS's own builders make of it:
#   - every systemd service and timer as its unit file (etc/systemd/system/NAME), rendered with the rules
#     of nixpkgs' nixos/lib/systemd-lib.nix (unitConfig, serviceConfig with the stage-2 default `path`,
#     serviceToUnit, timerToUnit, attrsToSection, commonUnitText), and the `.wants` links of `wantedBy`;
#   - systemd.tmpfiles.rules as etc/tmpfiles.d/00-nixos.conf (nixos/modules/system/boot/systemd/tmpfiles.nix);
#   - users.users / users.groups as a systemd-sysusers file (NixOS's systemd.sysusers backend);
#   - nix.settings as etc/nix/nix.conf (nixos/modules/config/nix.nix's key = value rendering);
#   - services.postgresql's ensureDatabases / ensureUsers as postgresql-setup.service, the unit in which
#     NixOS (25.05 and later) creates them, with the same SQL, and postgresql.target.
# Anything in the module's output this file does not know how to render (a unit option such as `script`
# or `startAt`, a user attribute such as `uid`) stops the evaluation with an error naming it: the VM must
# never run something other than what NixOS would.
#
# Package paths are whatever the stand-in packages say: run.sh passes vm-pkgs.nix, which maps them to where
# the VM has the programs (/opt/niks3, /usr). Output: { files = [ { path; text; mode; } ]; links = [ {
# path; target; } ]; storePaths = [ … ]; } (paths relative to the VM's root; storePaths are the host store
# paths the files mention, to be copied into the VM's store as they are).
{
  libPath,
  modulePath,
  configPath,
  extraPkgsPath,
  # Where the VM has what NixOS would take from its own packages (`systemd` in the default `path`, the
  # directories of systemd.globalEnvironment, the shell of system users).
  vm ? {
    systemd = "/usr";
    zoneinfo = "/usr/share/zoneinfo";
    localeArchive = "/usr/lib/locale/locale-archive";
    nologin = "/usr/sbin/nologin";
    postgresqlBin = "/usr/bin";
  },
}:
let
  lib = import libPath;
  inherit (lib)
    attrNames
    concatMapStrings
    concatStrings
    concatStringsSep
    concatLists
    isList
    mapAttrsToList
    optionalAttrs
    optionalString
    ;
  evaluated = import ../evaluator/eval.nix {
    inherit
      libPath
      modulePath
      configPath
      extraPkgsPath
      ;
  };
  extraPkgs = import extraPkgsPath;
  sd = evaluated.systemd;

  # The unit options this renderer implements (systemd-unit-options.nix); anything else is an error.
  known = {
    service = [
      "description"
      "documentation"
      "wantedBy"
      "requiredBy"
      "wants"
      "requires"
      "after"
      "before"
      "bindsTo"
      "partOf"
      "conflicts"
      "requisite"
      "onFailure"
      "path"
      "environment"
      "serviceConfig"
      "unitConfig"
      "enable"
    ];
    timer = [
      "description"
      "documentation"
      "wantedBy"
      "wants"
      "requires"
      "after"
      "before"
      "timerConfig"
      "unitConfig"
      "enable"
    ];
  };
  checkKnown =
    kind: name: def:
    let
      unknown = builtins.filter (a: !(builtins.elem a known.${kind})) (attrNames def);
    in
    if unknown == [ ] then
      def
    else
      throw "render.nix: ${name}.${kind} sets ${concatStringsSep ", " unknown}, which this renderer does not implement";

  # nixos/lib/systemd-lib.nix: toOption, attrsToSection.
  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;
  attrsToSection =
    as:
    concatStrings (
      concatLists (
        mapAttrsToList (
          name: value:
          map (x: ''
            ${name}=${toOption x}
          '') (if isList value then value else [ value ])
        ) as
      )
    );

  # nixos/lib/systemd-lib.nix: unitConfig (the list options become space-separated directives).
  unitConfigOf =
    def:
    let
      l = n: def.${n} or [ ];
      s = n: optionalAttrs (l n != [ ]);
    in
    s "requires" { Requires = toString (l "requires"); }
    // s "wants" { Wants = toString (l "wants"); }
    // s "after" { After = toString (l "after"); }
    // s "before" { Before = toString (l "before"); }
    // s "bindsTo" { BindsTo = toString (l "bindsTo"); }
    // s "partOf" { PartOf = toString (l "partOf"); }
    // s "conflicts" { Conflicts = toString (l "conflicts"); }
    // s "requisite" { Requisite = toString (l "requisite"); }
    // optionalAttrs ((def.description or "") != "") { Description = def.description; }
    // s "documentation" { Documentation = toString (l "documentation"); }
    // s "onFailure" { OnFailure = toString (l "onFailure"); }
    // (def.unitConfig or { });

  # nixos/lib/systemd-lib.nix: commonUnitText.
  commonUnitText =
    def: lines:
    ''
      [Unit]
      ${attrsToSection (unitConfigOf def)}
    ''
    + lines
    + optionalString ((def.wantedBy or [ ]) != [ ]) ''

      [Install]
      WantedBy=${concatStringsSep " " def.wantedBy}
    '';

  # nixos/modules/config/{time,i18n}.nix set these for every unit; mapped to the VM's directories.
  globalEnvironment = {
    TZDIR = vm.zoneinfo;
    LOCALE_ARCHIVE = vm.localeArchive;
  };

  # nixos/lib/systemd-lib.nix: stage2ServiceConfig's default path (after the unit's own) and
  # serviceConfig's PATH, then serviceToUnit.
  systemdPkg = {
    outPath = vm.systemd;
  };
  defaultPath = [
    extraPkgs.coreutils
    extraPkgs.findutils
    extraPkgs.gnugrep
    extraPkgs.gnused
    systemdPkg
  ];
  serviceText =
    name: def0:
    let
      def = checkKnown "service" name def0;
      path = (def.path or [ ]) ++ defaultPath;
      environment = (def.environment or { }) // {
        PATH = "${lib.makeBinPath path}:${lib.makeSearchPathOutput "bin" "sbin" path}";
      };
      env = globalEnvironment // environment;
    in
    commonUnitText def (
      ''
        [Service]
      ''
      + concatMapStrings (
        n: optionalString (env.${n} != null) "Environment=${builtins.toJSON "${n}=${env.${n}}"}\n"
      ) (attrNames env)
      + attrsToSection (def.serviceConfig or { })
    );
  timerText =
    name: def0:
    let
      def = checkKnown "timer" name def0;
    in
    commonUnitText def ''
      [Timer]
      ${attrsToSection def.timerConfig}
    '';

  enabled = lib.filterAttrs (_: d: d.enable or true);
  units =
    mapAttrsToList (n: d: {
      name = "${n}.service";
      text = serviceText n d;
      wantedBy = d.wantedBy or [ ];
    }) (enabled (sd.services or { }))
    ++ mapAttrsToList (n: d: {
      name = "${n}.timer";
      text = timerText n d;
      wantedBy = d.wantedBy or [ ];
    }) (enabled (sd.timers or { }))
    ++ postgresqlUnits;

  # NixOS's services.postgresql: ensureDatabases and ensureUsers run in postgresql-setup.service
  # (nixos/modules/services/databases/postgresql.nix), as the postgres user, with this SQL; units that
  # need them order after it or after postgresql.target.
  pg = evaluated.services.postgresql or { };
  pgEnabled = pg.enable or false;
  psql = "${vm.postgresqlBin}/psql --port=5432 -tAc";
  pgKnownUser = [
    "name"
    "ensureDBOwnership"
  ];
  ensureUserSql =
    u:
    let
      unknown = builtins.filter (a: !(builtins.elem a pgKnownUser)) (attrNames u);
    in
    if unknown != [ ] then
      throw "render.nix: services.postgresql.ensureUsers.${u.name} sets ${concatStringsSep ", " unknown}, which this renderer does not implement"
    else
      ''
        ${psql} "SELECT 1 FROM pg_roles WHERE rolname='${u.name}'" | grep -q 1 || ${psql} 'CREATE USER "${u.name}"'
      ''
      + optionalString (u.ensureDBOwnership or false) ''
        ${psql} 'ALTER DATABASE "${u.name}" OWNER TO "${u.name}";'
      '';
  pgSetupScript = {
    path = "usr/local/lib/niks3-vm/postgresql-setup";
    text = ''
      #!/bin/bash
      set -e
      ${concatMapStrings (db: ''
        ${psql} "SELECT 1 FROM pg_database WHERE datname = '${db}'" | grep -q 1 || ${psql} 'CREATE DATABASE "${db}"'
      '') (pg.ensureDatabases or [ ])}
      ${concatMapStrings ensureUserSql (pg.ensureUsers or [ ])}
    '';
    mode = "0755";
  };
  postgresqlUnits = lib.optionals pgEnabled [
    {
      name = "postgresql-setup.service";
      text = serviceText "postgresql-setup" {
        description = "PostgreSQL Setup Scripts";
        requires = [ "postgresql.service" ];
        after = [ "postgresql.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          User = "postgres";
          Group = "postgres";
          ExecStart = "/${pgSetupScript.path}";
        };
      };
      wantedBy = [ ];
    }
    {
      name = "postgresql.target";
      text = ''
        [Unit]
        ${attrsToSection {
          Description = "PostgreSQL";
          Requires = "postgresql.service postgresql-setup.service";
          After = "postgresql.service postgresql-setup.service";
        }}
        [Install]
        WantedBy=multi-user.target
      '';
      wantedBy = [ "multi-user.target" ];
    }
  ];

  # users-groups.nix: a system user gets a uid below 1000, nologin, no home directory created.
  knownUser = [
    "isSystemUser"
    "group"
    "home"
    "description"
  ];
  sysusers = concatStrings (
    mapAttrsToList (n: _: "g ${n} -\n") (evaluated.users.groups or { })
    ++ mapAttrsToList (
      n: u:
      let
        unknown = builtins.filter (a: !(builtins.elem a knownUser)) (attrNames u);
      in
      if unknown != [ ] then
        throw "render.nix: users.users.${n} sets ${concatStringsSep ", " unknown}, which this renderer does not implement"
      else if !(u.isSystemUser or false) then
        throw "render.nix: users.users.${n} is not a system user; only system users are rendered"
      else
        "u ${n} -:${u.group} ${
          builtins.toJSON (u.description or "")
        } ${u.home or "/var/empty"} ${vm.nologin}\n"
    ) (evaluated.users.users or { })
  );

  # nixos/modules/config/nix.nix: nix.settings as `key = value`, lists space-separated.
  nixValue =
    v:
    if v == null then
      ""
    else if builtins.isBool v then
      lib.boolToString v
    else if isList v then
      toString v
    else
      toString v;
  nixConf = ''
    # WARNING: this file is generated from the nix.* options in
    # your NixOS configuration, typically
    # /etc/nixos/configuration.nix.  Do not edit it!
    ${concatStringsSep "\n" (
      mapAttrsToList (k: v: "${lib.escape [ "=" ] k} = ${nixValue v}") (evaluated.nix.settings or { })
    )}
  '';

  files = [
    {
      path = "etc/tmpfiles.d/00-nixos.conf";
      text = concatStringsSep "\n" (sd.tmpfiles.rules or [ ]) + "\n";
      mode = "0644";
    }
    {
      path = "etc/sysusers.d/00-nixos.conf";
      text = sysusers;
      mode = "0644";
    }
    {
      path = "etc/nix/nix.conf";
      text = nixConf;
      mode = "0644";
    }
  ]
  ++ lib.optional pgEnabled pgSetupScript
  ++ map (u: {
    path = "etc/systemd/system/${u.name}";
    inherit (u) text;
    mode = "0644";
  }) units;
  links = concatLists (
    map (
      u:
      map (t: {
        path = "etc/systemd/system/${t}.wants/${u.name}";
        target = "../${u.name}";
      }) u.wantedBy
    ) units
  );
  # The host store paths the files mention (the scripts writeShellScript made with builtins.toFile).
  storePaths = lib.unique (
    concatLists (
      map (
        f:
        map (m: builtins.head m) (
          builtins.filter (m: m != null) (
            map (w: builtins.match "(${builtins.storeDir}/[a-z0-9]{32}-[^ \"'\n]+).*" w) (
              lib.splitString " " (builtins.replaceStrings [ "\n" "=" ] [ " " " " ] f.text)
            )
          )
        )
      ) files
    )
  );
in
{
  failedAssertions = evaluated.failedAssertions;
  inherit files links storePaths;
}
