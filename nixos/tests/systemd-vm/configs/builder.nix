# The second configuration, switched to in the running VM: the same server, and this machine as a builder
# that pushes its spool through the push API like nixos/examples/builder-remote.nix (niks3-drain.service
# with its own push token; the server then runs with --no-spool), to the server on this machine. The GC
# timer presents a gc-scoped token like nixos/examples/server-s3.nix. The VM test makes both tokens with
# `niks3 token create` before switching.
{ lib, ... }:
{
  imports = [
    ./server.nix
    ../../../examples/builder-remote.nix
  ];
  services.niks3.hook.serverUrl = lib.mkForce "http://127.0.0.1:5751";
  services.niks3.gc.tokenFile = "/run/secrets/niks3/gc-token";
}
