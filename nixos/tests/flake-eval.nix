# For eval_test.py: the parts of flake.nix that evaluate without nixpkgs — the flake's inputs and output
# names, the version read from Cargo.toml, what the overlay hands to callPackage, the modules, and the
# VM checks' wiring. (The cargo source set uses lib.fileset, which needs Nix >= 2.14; eval_test.py
# checks its list against the workspace members instead.)
{ libPath }:
let
  lib = import libPath;
  flake = import ../../flake.nix;
  nixpkgs = {
    inherit lib;
    outPath = "/nixpkgs-unavailable";
  };
  self = outputs // {
    outPath = toString ../..;
  };
  outputs = flake.outputs { inherit self nixpkgs; };
  # callPackage stand-in: records which file the overlay calls with which arguments.
  final = {
    callPackage = fn: args: {
      file = toString fn;
      inherit args;
    };
  };
  overlay = outputs.overlays.default final { };
  pkgArgs = p: {
    inherit (p) file;
    version = p.args.version;
    crate = p.args.crate or "niks3";
  };
  checkFiles = import ./vm { pkgs.testers.runNixOSTest = t: toString t; };
in
{
  inputs = builtins.attrNames flake.inputs;
  nixpkgsUrl = flake.inputs.nixpkgs.url;
  outputNames = builtins.attrNames outputs;
  overlay = builtins.mapAttrs (_: pkgArgs) overlay;
  packageArgs = builtins.attrNames (builtins.functionArgs (import ../package.nix));
  moduleDefaultImports = map toString outputs.nixosModules.default.imports;
  moduleBare = toString outputs.nixosModules.niks3;
  checks = checkFiles;
}
