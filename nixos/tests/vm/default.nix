# The NixOS VM tests, exposed as the flake's checks (they need KVM). `pkgs` must carry the niks3
# overlay (flake.nix passes it), so that the nodes' pkgs.niks3 and pkgs.niks3-hook are this build.
{ pkgs }:
{
  # Server (niks3 + PostgreSQL + Garage S3 + nginx), a builder whose hook feeds it through niks3-drain,
  # and a client substituting with signatures required.
  cache = pkgs.testers.runNixOSTest ./cache.nix;
  # One machine (local store, generated key and token): the GC timer's unit and its five figures, and
  # a forced collection that forgets an old closure without breaking a live one that shares a path.
  gc = pkgs.testers.runNixOSTest ./gc.nix;
  # The server is down: builds stay green and fast, queued paths survive the local Nix GC, and the
  # drainer delivers everything once the server is back.
  server-down = pkgs.testers.runNixOSTest ./server-down.nix;
}
