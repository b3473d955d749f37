# One machine set up the short way (local object directory, local PostgreSQL, key and token generated
# on first start, the hook drained by the local server): the GC timer and its unit, the five figures in
# the logs, and a forced collection that forgets an old closure but keeps a live one intact, including
# the dependency both share.
{ ... }:
{
  name = "niks3-gc";

  nodes.machine = {
    imports = [ ./common.nix ];
    services.niks3 = {
      enable = true;
      storageDir = "/srv/niks3-cache";
      generateSignKey = true;
      hook.enable = true;
      gc = {
        olderThan = "720h";
        failedUploadsOlderThan = "6h";
      };
    };
  };

  testScript = builtins.readFile ./prelude.py + ''
    base = "http://127.0.0.1:5751"
    machine.wait_for_unit("niks3.service")
    machine.wait_for_open_port(5751)

    with subtest("the timer is scheduled daily with a random delay"):
        machine.succeed("systemctl is-active niks3-gc.timer")
        timer = machine.succeed("systemctl show niks3-gc.timer -p TimersCalendar -p RandomizedDelayUSec -p Persistent")
        assert "OnCalendar=daily" in timer or "*-*-* 00:00:00" in timer, timer
        assert "RandomizedDelayUSec=30min" in timer, timer
        assert "Persistent=yes" in timer, timer

    with subtest("generated key and token, built paths uploaded by the local server"):
        pub = machine.succeed("cat /var/lib/niks3/keys/*.pub").strip()
        machine.succeed("test $(stat -c %a /var/lib/niks3/api-token) = 600")
        a = build(machine, "a", "gc")
        (common,) = references(machine, a)
        for p in (a, common):
            wait_cached(machine, base, p)

    with subtest("niks3-gc.service with the configured 720h deletes nothing and logs the five figures"):
        machine.succeed("systemctl start niks3-gc.service")
        assert machine.succeed("systemctl show niks3-gc.service -p Result --value").strip() == "success"
        log = machine.succeed("journalctl -u niks3-gc.service -o cat")
        for name in GC_FIGURES:
            assert name.replace("-", "_") in log.replace("-", "_"), (name, log)
        server_log = machine.succeed("journalctl -u niks3.service -o cat")
        assert all(name in server_log for name in GC_FIGURES), server_log
        wait_cached(machine, base, a, timeout=5)

    with subtest("a forced GC forgets the old closure, keeps the live one and the shared dependency"):
        machine.succeed("sleep 15")
        b = build(machine, "b", "gc")
        assert references(machine, b) == [common]
        wait_cached(machine, base, b)
        machine.succeed(
            f"niks3 gc --server {base} --auth-token-file /var/lib/niks3/api-token"
            " --older-than=10s --failed-uploads-older-than=6h --force"
        )
        machine.fail(f"curl -fsS {narinfo_url(base, a)}")
        machine.succeed(f"curl -fsS {narinfo_url(base, b)}", f"curl -fsS {narinfo_url(base, common)}")
        # b's closure still substitutes into an empty store with signatures checked.
        machine.succeed(
            f"nix copy --from {base} --to /tmp/chroot --option trusted-public-keys '{pub}' {b}",
            f"test -e /tmp/chroot{b}",
            f"test -e /tmp/chroot{common}",
        )
  '';
}
