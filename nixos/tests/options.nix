# For eval_test.py: the declared options of services.niks3 (name, type, description, default, whether
# the manual shows them, and the files declaring them), from the module evaluated with the real nixpkgs
# lib and the shared stand-ins, so that the test can require a description for every visible option,
# check that docs/nixos.md lists every one of them, and that each is declared in its role's file.
{ libPath, stubsPath }:
let
  lib = import libPath;
  stubs = import stubsPath { inherit lib; };
  evaluated = lib.evalModules {
    modules = [
      stubs.module
      ../module.nix
    ];
    specialArgs = {
      pkgs = stubs.pkgs;
      modulesPath = "/nixos-modules-unavailable";
    };
  };
in
map
  (o: {
    inherit (o) name type readOnly;
    description = o.description or "";
    hasDefault = o ? default;
    visible = o.visible or true;
    internal = o.internal or false;
    declarations = map toString o.declarations;
  })
  (
    builtins.filter (o: lib.hasPrefix "services.niks3." o.name) (
      lib.optionAttrSetToDocList evaluated.options
    )
  )
