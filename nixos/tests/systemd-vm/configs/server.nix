# The first configuration the systemd VM check boots: nixos/examples/embedded.nix as it is (the server
# with this machine's PostgreSQL, a local object directory outside the state directory, a generated
# signing key and admin token, the hook drained by the server itself, the daily GC timer presenting the
# generated admin token), plus what the VM's Nix needs to build offline (no sandbox: the derivations'
# builder is /bin/sh; no substituters).
{ ... }:
{
  imports = [ ../../../examples/embedded.nix ];
  nix.settings = {
    sandbox = false;
    substituters = [ ];
    build-users-group = "nixbld";
  };
}
