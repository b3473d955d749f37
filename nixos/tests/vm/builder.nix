# The builder node of the VM tests that push to a server: the documented remote builder
# (nixos/examples/builder-remote.nix, its token at the same path, written by the test script) pushing to
# `serverUrl`, with niks3-drain left stopped until the test script starts it.
serverUrl:
{ lib, ... }:
{
  imports = [
    ./common.nix
    ../../examples/builder-remote.nix
  ];
  services.niks3.hook.serverUrl = lib.mkForce serverUrl;
  systemd.services.niks3-drain.wantedBy = lib.mkForce [ ];
}
