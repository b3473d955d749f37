# The cache server is down: builds on a builder with the hook stay green, queued paths wait in the
# spool and survive the local Nix GC, the drainer keeps retrying without crashing, and once the server
# is up everything arrives and the spool and GC roots are emptied.
{ lib, ... }:
{
  name = "niks3-server-down";

  nodes = {
    server = {
      # The documented one-machine setup (nixos/examples/embedded.nix), less its own hook: here the
      # builds happen on the builder, whose drainer pushes with this token.
      imports = [
        ./common.nix
        ../../examples/embedded.nix
      ];
      services.niks3 = {
        hook.enable = lib.mkForce false;
        apiTokenFile = "/run/secrets/niks3/api-token";
      };
      # Down until the test starts it.
      systemd.services.niks3.wantedBy = lib.mkForce [ ];
    };

    builder = import ./builder.nix "http://server:5751";
  };

  testScript = builtins.readFile ./prelude.py + ''
    start_all()
    write_secret(server, "/run/secrets/niks3/api-token", TOKEN)
    write_secret(builder, "/run/secrets/niks3/api-token", TOKEN)
    builder.wait_for_unit("multi-user.target")
    builder.succeed("systemctl start niks3-drain.service")
    server.wait_for_unit("multi-user.target")
    server.fail("curl -fsS http://127.0.0.1:5751/health")

    outs = []
    with subtest("builds succeed while the server is down"):
        for i in range(3):
            a = build(builder, "a", f"down-{i}")
            outs += [a] + references(builder, a)
        assert len(spool_entries(builder)) >= 1, "nothing queued"
        for p in outs:
            builder.succeed(f"test -L /nix/var/nix/gcroots/niks3/{os.path.basename(p)}")

    with subtest("queued paths survive the local Nix GC"):
        builder.succeed("nix-collect-garbage")
        for p in outs:
            builder.succeed(f"nix-store --check-validity {p}")

    with subtest("the drainer retries without crashing"):
        builder.succeed("sleep 5")
        builder.succeed("systemctl is-active niks3-drain.service")
        restarts = builder.succeed("systemctl show niks3-drain.service -p NRestarts --value").strip()
        assert restarts == "0", f"niks3-drain restarted {restarts} times"

    with subtest("the server comes back: everything arrives, spool and GC roots empty"):
        server.succeed("systemctl start niks3.service")
        server.wait_for_open_port(5751)
        for p in outs:
            wait_cached(builder, "http://server:5751", p, timeout=300)
        builder.wait_until_succeeds("test -z \"$(ls -A /var/lib/niks3/spool/new /var/lib/niks3/spool/claimed)\"")
        assert spool_entries(builder, "quarantine") == [], "entries were quarantined"
        for p in outs:
            builder.wait_until_succeeds(f"test ! -e /nix/var/nix/gcroots/niks3/{os.path.basename(p)}")
        pub = server.succeed("cat /var/lib/niks3/keys/*.pub").strip()
        builder.succeed(
            f"nix copy --from http://server:5751 --to /tmp/chroot --option trusted-public-keys '{pub}' {outs[0]}"
        )
  '';
}
