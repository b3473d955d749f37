# Tiny derivations for the VM tests, without nixpkgs: the builder is the build sandbox's /bin/sh.
# `salt` makes fresh store paths, so every test builds paths no cache has seen.
#   a and b both reference `common`, so forgetting a's closure must not delete common while b lives.
{
  salt ? "",
}:
let
  mk =
    name: script:
    derivation {
      inherit name salt;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [
        "-c"
        script
      ];
    };
in
rec {
  common = mk "niks3-test-common" "echo 'common ${salt}' > $out";
  a = mk "niks3-test-a" "echo 'a uses ${common}' > $out";
  b = mk "niks3-test-b" "echo 'b uses ${common}' > $out";
}
