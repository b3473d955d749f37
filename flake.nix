{
  description = "niks3: a self-filling Nix binary cache (post-build-hook → durable spool → zstd → S3, PostgreSQL bookkeeping)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # Linux only: the daemon uses inotify and the checks need KVM.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      version = (lib.importTOML ./Cargo.toml).workspace.package.version;

      # Only what cargo needs, so that editing docs or Nix files does not rebuild the binaries.
      # Every workspace crate lives under ./crates (plus the testkit), so a new crate needs no change here.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./crates
          ./testkit
          ./migrations
        ];
      };

      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
        };
      forAllSystems = f: lib.genAttrs systems (system: f (pkgsFor system));
    in
    {
      overlays.default = final: _prev: {
        niks3 = final.callPackage ./nixos/package.nix { inherit src version; };
        niks3-hook = final.callPackage ./nixos/package.nix {
          inherit src version;
          crate = "niks3-hook";
        };
      };

      packages = forAllSystems (pkgs: {
        inherit (pkgs) niks3 niks3-hook;
        default = pkgs.niks3;

        # `docker load < result`; configured entirely by the NIKS3_* environment (see docs/nixos.md).
        # Runs as uid 1000 because the embedded PostgreSQL (used when NIKS3_DB is unset) refuses root.
        # It serves pushes from remote builders and CI; it has no local Nix store to drain (--no-spool).
        container = pkgs.dockerTools.buildLayeredImage {
          name = "niks3";
          tag = version;
          contents = [
            pkgs.niks3
            pkgs.cacert
            # pg_ctl starts the embedded PostgreSQL through /bin/sh.
            pkgs.dockerTools.binSh
            (pkgs.dockerTools.fakeNss.override {
              extraPasswdLines = [ "niks3:x:1000:1000:niks3:/var/lib/niks3:/bin/false" ];
              extraGroupLines = [ "niks3:x:1000:" ];
            })
          ];
          fakeRootCommands = ''
            mkdir -p var/lib/niks3 tmp
            chown 1000:1000 var/lib/niks3
            chmod 1777 tmp
          '';
          config = {
            Entrypoint = [ "${pkgs.niks3}/bin/niks3" ];
            Cmd = [
              "serve"
              "--no-spool"
            ];
            User = "1000:1000";
            WorkingDirectory = "/var/lib/niks3";
            Env = [
              "NIKS3_STATE_DIR=/var/lib/niks3"
              "NIKS3_HTTP_ADDR=:5751"
              "HOME=/var/lib/niks3"
              "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
            ];
            ExposedPorts."5751/tcp" = { };
            Volumes."/var/lib/niks3" = { };
            Labels."org.opencontainers.image.source" = "https://github.com/niks3/niks3";
          };
        };
      });

      # With the overlay, so that services.niks3.package and hook.package default to this flake's build.
      nixosModules.default = {
        imports = [ ./nixos/module.nix ];
        nixpkgs.overlays = [ self.overlays.default ];
      };
      # The bare module, for systems whose pkgs cannot take overlays (set the two package options).
      nixosModules.niks3 = ./nixos/module.nix;

      # NixOS VM tests in nixos/tests/vm (need KVM): `nix flake check` or `nix build .#checks.x86_64-linux.cache`.
      checks = forAllSystems (
        pkgs:
        import ./nixos/tests/vm { inherit pkgs; }
        // {
          inherit (pkgs) niks3 niks3-hook;
        }
      );

      # Everything the test suite (scripts/test.sh) and the benchmarks drive.
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.niks3 ];
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            nix
            postgresql
            garage
            wrk
            nginx
            hyperfine
            chromium
            python3
            curl
            jq
            zstd
            openssl
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
