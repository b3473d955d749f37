# A cache server (niks3 + local PostgreSQL + Garage S3 + nginx), a builder whose post-build-hook feeds
# it through niks3-drain, and a client that substitutes the builder's paths with signatures required.
{ lib, ... }:
let
  # Test-only S3 credentials, imported into Garage by the test script (Garage key id format: GK + 24 hex).
  s3KeyId = "GK0123456789abcdef01234567";
  s3Secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
in
{
  name = "niks3-cache";

  nodes = {
    server = { pkgs, ... }: {
      imports = [
        ./common.nix
        ../../examples/server-s3.nix
      ];
      virtualisation.memorySize = lib.mkForce 2048;
      # Garage refuses to start with less than 1 GiB free.
      virtualisation.diskSize = 2048;

      services.garage = {
        enable = true;
        package = pkgs.garage;
        settings = {
          replication_factor = 1;
          rpc_bind_addr = "127.0.0.1:3901";
          rpc_public_addr = "127.0.0.1:3901";
          rpc_secret = "5c1915fa04d0b6739675c61bf5907eb0fe3d9c69850c83820f51b4d25d13868c";
          s3_api = {
            s3_region = "garage";
            api_bind_addr = "127.0.0.1:3900";
            root_domain = ".s3.garage.localhost";
          };
          admin.api_bind_addr = "127.0.0.1:3903";
        };
      };

      # The documented public cache (nixos/examples/server-s3.nix, secrets at the same paths), pointed at
      # this machine's Garage and served over plain http as `server`.
      services.niks3 = {
        cacheUrl = lib.mkForce null;
        s3 = {
          endpoint = lib.mkForce "http://127.0.0.1:3900";
          bucket = lib.mkForce "niks3";
          region = lib.mkForce "garage";
        };
        nginx = {
          domain = lib.mkForce "server";
          enableACME = false;
          forceSSL = false;
        };
      };
      # The bucket, the S3 key and the secrets are made by the test script (as sops-nix would at
      # activation), so the server is started by hand afterwards.
      systemd.services.niks3.wantedBy = lib.mkForce [ ];
    };

    builder = import ./builder.nix "http://server";

    client = {
      imports = [ ./common.nix ];
    };
  };

  testScript = builtins.readFile ./prelude.py + ''
    start_all()

    with subtest("Garage: single-node layout, bucket, key"):
        server.wait_for_unit("garage.service")
        server.wait_for_open_port(3900)
        node_id = server.succeed("garage node id -q").strip().split("@")[0]
        server.succeed(f"garage layout assign -z dc1 -c 1G {node_id}")
        server.succeed("garage layout apply --version 1")
        server.succeed("garage bucket create niks3")
        server.succeed("garage key import --yes -n niks3 ${s3KeyId} ${s3Secret}")
        server.succeed("garage bucket allow --read --write --owner niks3 --key niks3")

    with subtest("secrets outside the store, then the server starts"):
        write_secret(server, "/run/secrets/niks3/s3-access-key", "${s3KeyId}")
        write_secret(server, "/run/secrets/niks3/s3-secret-key", "${s3Secret}")
        write_secret(server, "/run/secrets/niks3/api-token", TOKEN)
        server.succeed(
            "niks3 key generate --name cache-1 --secret-out /run/secrets/niks3/cache-1.sec"
            " --public-out /run/secrets/niks3/cache-1.pub"
        )
        pub = server.succeed("cat /run/secrets/niks3/cache-1.pub").strip()
        assert pub.startswith("cache-1:"), pub
        server.succeed("systemctl start niks3.service")
        server.wait_for_unit("niks3.service")
        server.wait_for_open_port(5751)
        server.wait_for_unit("nginx.service")
        # The unit is hardened and secret-free: no secret in its environment or command line.
        unit = server.succeed("systemctl show niks3.service -p Environment -p ExecStart")
        assert "${s3Secret}" not in unit and TOKEN not in unit, unit
        assert server.succeed("systemctl show niks3.service -p User --value").strip() == "niks3"
        server.succeed("curl -fsS http://127.0.0.1:5751/health")
        client.wait_for_unit("multi-user.target")
        client.succeed("curl -fsS http://server/nix-cache-info | grep -x 'StoreDir: /nix/store'")

    with subtest("builder: the hook queues, niks3-drain pushes through nginx"):
        write_secret(builder, "/run/secrets/niks3/api-token", TOKEN)
        builder.succeed("systemctl start niks3-drain.service")
        a = build(builder, "a", "cache")
        (common,) = references(builder, a)
        for p in (a, common):
            wait_cached(client, "http://server", p)
        builder.wait_until_succeeds("test -z \"$(ls -A /var/lib/niks3/spool/new /var/lib/niks3/spool/claimed)\"")
        builder.wait_until_succeeds(f"test ! -e /nix/var/nix/gcroots/niks3/{os.path.basename(a)}")
        narinfo = client.succeed(f"curl -fsS {narinfo_url('http://server', a)}")
        assert f"StorePath: {a}" in narinfo and "Sig: cache-1:" in narinfo, narinfo
        assert os.path.basename(common) in narinfo, narinfo

    with subtest("client: wrong key is refused, the right key substitutes the closure"):
        client.succeed("nix-store --generate-binary-cache-key wrong-1 /tmp/wrong.sec /tmp/wrong.pub")
        out = client.fail(
            f"nix-store -r {a} --option substituters http://server"
            " --option trusted-public-keys \"$(cat /tmp/wrong.pub)\" 2>&1"
        )
        assert re.search(UNTRUSTED_SIGNATURE, out), out
        client.fail(f"test -e {a}")
        client.succeed(
            f"nix-store -r {a} --option substituters http://server --option trusted-public-keys '{pub}'"
        )
        client.succeed(f"grep -F 'a uses {common}' {a}")
        client.succeed(f"nix-store --verify-path {a} {common}")

    with subtest("niks3 push from the builder (idempotent for a cached path, new path uploaded)"):
        b = build(builder, "b", "cache")
        builder.succeed(
            f"niks3 push --server http://server --auth-token-file /run/secrets/niks3/api-token {a} {b}"
        )
        wait_cached(client, "http://server", b)
        client.succeed(
            f"nix-store -r {b} --option substituters http://server --option trusted-public-keys '{pub}'"
        )
        code = client.succeed(
            "curl -s -o /dev/null -w '%{http_code}' -X POST"
            " -H 'Authorization: Bearer wrong-token-wrong-token-wrong-token-00' http://server/api/v1/gc"
        )
        assert code.strip() == "401", code
  '';
}
