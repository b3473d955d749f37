# The niks3 NixOS module: one file per role under modules/niks3 (server, gc, nginx, hook, drainer; see
# its default.nix). This file stays the module's entry point for flake.nix, the VM tests and the
# evaluation harness.
{
  imports = [ ./modules/niks3 ];
}
