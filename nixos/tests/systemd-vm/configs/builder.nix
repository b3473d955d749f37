# The second configuration, switched to in the running VM: the same server, and this machine as a builder
# that pushes its spool through the push API like nixos/examples/builder-remote.nix (niks3-drain.service
# with its own push token; the server then runs with --no-spool), to the server on this machine, listed
# second after one that does not answer. The GC
# timer presents a gc-scoped token like nixos/examples/server-s3.nix. The VM test makes both tokens with
# `niks3 token create` before switching.
{ lib, ... }:
{
  imports = [
    ./server.nix
    ../../../examples/builder-remote.nix
  ];
  # Two servers, as for a cluster sharing one bucket and database: the first does not answer (nothing
  # listens on 5752), so every push goes on to the second, this machine's server.
  services.niks3.hook.serverUrl = lib.mkForce [
    "http://127.0.0.1:5752"
    "http://127.0.0.1:5751"
  ];
  services.niks3.gc.tokenFile = "/run/secrets/niks3/gc-token";
}
