# Extra stand-ins for evaluator/eval-nixos-module (its third argument), used by eval_test.py:
# writeShellScript puts the script's text into the store with builtins.toFile, so that the test can
# read the exact wrapper the module installs as Nix's post-build-hook instead of a placeholder path.
let
  script = name: text: {
    type = "derivation";
    inherit name text;
    pname = name;
    version = "0-stub";
    outPath = builtins.toFile name text;
    drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
    meta.mainProgram = name;
    passthru = { };
  };
in
{
  writeShellScript = script;
}
