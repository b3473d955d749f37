# Helpers shared by the niks3 VM tests (prepended to each testScript).
import os
import re

# The API token the server and the builders share (at least 36 characters). Test only: real
# deployments keep it in sops-nix (see docs/nixos.md).
TOKEN = "niks3-vm-test-token-0123456789abcdef0123456789abcdef"

GC_FIGURES = [
    "failed-uploads-deleted",
    "old-closures-deleted",
    "objects-marked-for-deletion",
    "objects-deleted-after-grace-period",
    "objects-failed-to-delete",
]


# What Nix says about a narinfo not signed by a trusted key (the wording changed across versions).
UNTRUSTED_SIGNATURE = (
    r"lacks a valid signature|does not have a valid signature|not signed by any of the keys"
    r"|lacks a signature by a trusted key"
)


def write_secret(machine, path, value):
    """Puts a secret where sops-nix would: root-owned, 0400, outside the Nix store."""
    machine.succeed(
        f"install -d -m 0700 {os.path.dirname(path)}",
        f"(umask 077; printf %s '{value}' > {path})",
    )


def build(machine, attr, salt):
    """Builds nixos/tests/vm/drvs.nix's `attr` on `machine` (the post-build-hook runs); returns the out path."""
    return machine.succeed(
        f"nix-build /etc/niks3-test/drvs.nix -A {attr} --argstr salt {salt} --no-out-link"
    ).strip()


def references(machine, path):
    return [p for p in machine.succeed(f"nix-store -q --references {path}").split() if p != path]


def narinfo_url(base, path):
    return f"{base}/{os.path.basename(path)[:32]}.narinfo"


def wait_cached(machine, base, path, timeout=180):
    """Waits until `path`'s narinfo is served by the cache at `base` (as seen from `machine`)."""
    machine.wait_until_succeeds(f"curl -fsS {narinfo_url(base, path)}", timeout=timeout)


def spool_entries(machine, sub="new claimed"):
    out = machine.succeed(
        " ; ".join(f"ls -A /var/lib/niks3/spool/{d}" for d in sub.split()) + " ; true"
    )
    return [line for line in out.split() if line]
