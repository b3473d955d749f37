# The niks3 packages, built from this repository's Cargo.lock (no network at build time).
#   crate = "niks3":      the server and client (`niks3 serve|push|drain|gc|key`), plus niks3-hook beside it
#                         (`niks3 serve` prints the post-build-hook line pointing at it);
#   crate = "niks3-hook": only the post-build-hook (crate niks3-spool's binary), the small closure that builders install.
{
  lib,
  rustPlatform,
  makeBinaryWrapper,
  postgresql,
  src,
  version,
  crate ? "niks3",
}:
let
  isServer = crate == "niks3";
in
rustPlatform.buildRustPackage {
  pname = crate;
  inherit version src;

  cargoLock.lockFile = ../Cargo.lock;
  # niks3-hook is the binary of the niks3-spool crate (the spool library and the hook that fills it).
  cargoBuildFlags = [
    "--package"
    "niks3-spool"
  ]
  ++ lib.optionals isServer [
    "--package"
    "niks3"
  ];

  # The test suite drives real Nix, PostgreSQL and Garage processes (the testkit crate): it needs a
  # writable /nix/store, network ports and the Garage binary, none of which the build sandbox has. The
  # flake's `checks` (NixOS VM tests) exercise the built binaries instead.
  doCheck = false;

  nativeBuildInputs = lib.optional isServer makeBinaryWrapper;

  # With no --db, `niks3 serve` runs a private PostgreSQL created with initdb/pg_ctl from PATH.
  postInstall = lib.optionalString isServer ''
    wrapProgram $out/bin/niks3 --suffix PATH : ${lib.makeBinPath [ postgresql ]}
  '';

  meta = {
    description =
      if isServer then
        "Self-filling Nix binary cache: drains the niks3-hook spool into S3 with PostgreSQL bookkeeping"
      else
        "Nix post-build-hook for niks3: queues freshly built store paths to a durable local spool";
    homepage = "https://github.com/niks3/niks3";
    license = lib.licenses.mit;
    mainProgram = crate;
    platforms = lib.platforms.linux;
  };
}
