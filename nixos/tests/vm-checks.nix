# For eval_test.py: the VM tests of nixos/tests/vm as far as they evaluate without nixpkgs — each test's name,
# node names and testScript text (checked for Python syntax), and a NixOS config file per node (run
# through eval-nixos-module, so the nodes configure the module legally).
{ libPath, check }:
let
  lib = import libPath;
  test = import (./vm + "/${check}.nix") { inherit lib; };
in
{
  inherit (test) name;
  nodes = builtins.attrNames test.nodes;
  testScript = test.testScript;
}
