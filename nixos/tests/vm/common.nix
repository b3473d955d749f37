# Shared by every node of the VM tests: the module under test, Nix working offline, and the tiny
# derivations the tests build (drvs.nix, at /etc/niks3-test/drvs.nix).
{ lib, ... }:
{
  imports = [ ../../module.nix ];
  nix.settings = {
    # No network in the VMs: never try cache.nixos.org.
    substituters = lib.mkForce [ ];
    experimental-features = [ "nix-command" ];
    # The tests query caches before and after uploads; never trust a remembered 404.
    narinfo-cache-negative-ttl = 0;
  };
  environment.etc."niks3-test/drvs.nix".source = ./drvs.nix;
  virtualisation.memorySize = 1536;
}
