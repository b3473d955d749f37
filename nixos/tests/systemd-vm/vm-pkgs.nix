# The stand-in packages of the systemd VM check (the third argument of evaluator/eval-nixos-module and
# render.nix): where the VM has each program the module refers to. niks3 and niks3-hook are this tree's
# binaries, which run.sh installs as /opt/niks3/bin/niks3 and /opt/niks3-hook/bin/niks3-hook; Nix and the
# default `path` of NixOS services (coreutils, findutils, grep, sed) are Debian's, under /usr.
# writeShellScript makes the script for real with builtins.toFile, exactly as nixpkgs' writeShellScript
# writes it (`#!<shell>` line, the text, a newline), with Debian's bash as the shell: run.sh copies it into
# the VM's store at the same path and registers it there, as a NixOS system's closure would be.
let
  at = name: outPath: {
    type = "derivation";
    inherit name outPath;
    pname = name;
    version = "vm";
    drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
    meta.mainProgram = name;
    passthru = { };
  };
  script =
    name: text:
    at name (
      builtins.toFile name ''
        #!/bin/bash
        ${text}
      ''
    )
    // {
      inherit text;
    };
in
{
  niks3 = at "niks3" "/opt/niks3";
  niks3-hook = at "niks3-hook" "/opt/niks3-hook";
  nix = at "nix" "/usr";
  coreutils = at "coreutils" "/usr";
  findutils = at "findutils" "/usr";
  gnugrep = at "gnugrep" "/usr";
  gnused = at "gnused" "/usr";
  bash = at "bash" "/usr";
  postgresql = at "postgresql" "/usr";
  writeShellScript = script;
}
