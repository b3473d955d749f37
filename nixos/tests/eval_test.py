#!/usr/bin/env python3
"""Evaluates nixos/module.nix (the entry point importing the role files of nixos/modules/niks3: server, gc,
nginx, hook, drainer) with nixos/tests/evaluator/eval-nixos-module (the real nixpkgs lib, stand-ins for
the rest of NixOS) on the example configurations and on broken ones, and checks the JSON it prints: the
systemd units' commands, environment, credentials and hardening, the GC timer, the post-build-hook
wrapper, how `settings` renders to NIKS3_* variables, the renamed storeDir option, and that every
misconfiguration fails with a message naming the option at fault.

Usage: eval_test.py REPO_ROOT EVAL_TOOL   (tests/nixos-eval.sh passes both). Prints one line per check
and `N passed, M failed`; exits 1 if any check failed.
"""

import ast
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

ROOT, TOOL = sys.argv[1], sys.argv[2]
LIB = os.path.join(os.path.dirname(os.path.realpath(TOOL)), "vendor/nixpkgs-lib/lib")
MODULE = os.path.join(ROOT, "nixos/module.nix")
EXTRA = os.path.join(ROOT, "nixos/tests/eval-pkgs.nix")
EXAMPLES = os.path.join(ROOT, "nixos/examples")
STUB = "/nix/store/00000000000000000000000000000000-"

passed = 0
failed = 0
skipped = 0


def check(desc, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"  ok   - {desc}")
    else:
        failed += 1
        print(f"  FAIL - {desc}" + (f": {detail}" if detail else ""))


def skip(desc, why):
    global skipped
    skipped += 1
    print(f"  skip - {desc}: {why}")


def eq(desc, got, want):
    check(desc, got == want, f"got {got!r}, want {want!r}")


def evaluate(config_text=None, config_file=None):
    """Runs the tool; returns (exit code, parsed JSON or None, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        if config_file is None:
            config_file = os.path.join(tmp, "config.nix")
            with open(config_file, "w") as f:
                f.write(config_text)
        p = subprocess.run([TOOL, MODULE, config_file, EXTRA], capture_output=True, text=True)
    try:
        data = json.loads(p.stdout) if p.stdout.strip() else None
    except json.JSONDecodeError:
        data = None
    return p.returncode, data, p.stderr


def svc(d, name):
    return d["systemd"].get("services", {}).get(name)


def env_of(d, name):
    return (svc(d, name) or {}).get("environment", {})


def sc(d, name):
    return (svc(d, name) or {}).get("serviceConfig", {})


def all_strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from all_strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from all_strings(v)


def check_hardening(d, name):
    c = sc(d, name)
    eq(f"{name}: runs as the static user niks3", (c.get("User"), c.get("Group")), ("niks3", "niks3"))
    for key, want in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", True),
        ("PrivateTmp", True),
        ("ProtectHome", True),
        ("PrivateDevices", True),
        ("RestrictAddressFamilies", ["AF_UNIX", "AF_INET", "AF_INET6"]),
        ("CapabilityBoundingSet", ""),
        ("SystemCallArchitectures", "native"),
        # Both checked to work under a real systemd by nixos/tests/systemd-vm.
        ("PrivateUsers", True),
        ("SystemCallFilter", ["@system-service", "~@privileged", "~@resources"]),
    ]:
        eq(f"{name}: {key}={want}", c.get(key), want)


def check_no_secret_leak(d, secret_paths):
    """Secret paths may appear only in LoadCredential (and the echoed options), nowhere else."""
    units = d["systemd"]
    leaks = []
    for kind, entries in units.items():
        if kind == "tmpfiles":
            continue
        for uname, unit in entries.items():
            u = dict(unit)
            cfg = dict(u.get("serviceConfig", {}))
            cfg.pop("LoadCredential", None)
            u["serviceConfig"] = cfg
            for s in all_strings(u):
                for p in secret_paths:
                    if p in s:
                        leaks.append(f"{uname}: {s}")
    check("secret paths reach the units only through LoadCredential", not leaks, "; ".join(leaks))


def expect_failure(desc, config_text, pattern):
    """The config must not evaluate cleanly; the failed assertion or error must match `pattern`."""
    rc, d, err = evaluate(config_text)
    msgs = "\n".join(d["failedAssertions"]) if d else err
    check(f"{desc}: rejected", rc != 0, f"exit {rc}")
    check(f"{desc}: message /{pattern}/", re.search(pattern, msgs, re.S) is not None, msgs.strip()[-600:])


def evaluate_example(name):
    """Evaluates nixos/examples/NAME, checking that no assertion fails; returns its JSON or None."""
    rc, d, err = evaluate(config_file=os.path.join(EXAMPLES, name))
    eq("evaluates with no failed assertion", (rc, d and d["failedAssertions"]), (0, []))
    if not d:
        check("JSON output", False, err[-800:])
    return d


def server_s3():
    print("== example server-s3.nix (S3 on R2, nginx + ACME, local PostgreSQL, GC timer)")
    d = evaluate_example("server-s3.nix")
    if not d:
        return
    eq("no warnings", d["warnings"], [])
    s = svc(d, "niks3")
    c = sc(d, "niks3")
    e = env_of(d, "niks3")
    eq("niks3.service Type=notify (sd_notify READY=1)", c.get("Type"), "notify")
    eq("ExecStart runs niks3 serve", c.get("ExecStart"), f"{STUB}niks3/bin/niks3 serve --priority 30")
    eq("wanted by multi-user.target", s.get("wantedBy"), ["multi-user.target"])
    check("ordered after and requires postgresql and nix-daemon", "postgresql.service" in s.get("after", [])
          and s.get("requires") == ["nix-daemon.socket", "postgresql.service"], str(s.get("requires")))
    eq("StateDirectory=niks3", c.get("StateDirectory"), "niks3")
    check_hardening(d, "niks3")
    for k, v in {
        "NIKS3_STATE_DIR": "/var/lib/niks3",
        "NIKS3_HTTP_ADDR": "127.0.0.1:5751",
        "NIKS3_DB": "host=/run/postgresql user=niks3 dbname=niks3",
        "NIKS3_S3_ENDPOINT": "https://0123456789abcdef.r2.cloudflarestorage.com",
        "NIKS3_S3_BUCKET": "nix-cache",
        "NIKS3_S3_REGION": "auto",
        "NIKS3_S3_USE_SSL": "true",
        "NIKS3_S3_ACCESS_KEY_FILE": "%d/s3-access-key",
        "NIKS3_S3_SECRET_KEY_FILE": "%d/s3-secret-key",
        "NIKS3_API_TOKEN_FILE": "%d/api-token",
        "NIKS3_SIGN_KEY_PATHS": "%d/sign-key-0",
        "NIKS3_CACHE_URL": "https://cache.example.org",
        "NIKS3_SPOOL_DIR": "/var/lib/niks3/spool",
        "NIKS3_GCROOTS_DIR": "/nix/var/nix/gcroots/niks3",
        "NIX_REMOTE": "daemon",
    }.items():
        eq(f"env {k}", e.get(k), v)
    check("no local store dir with S3", "NIKS3_STORAGE_DIR" not in e)
    eq("LoadCredential: token, S3 keys, signing key", sorted(c.get("LoadCredential", [])), sorted([
        "api-token:/run/secrets/niks3/api-token",
        "s3-access-key:/run/secrets/niks3/s3-access-key",
        "s3-secret-key:/run/secrets/niks3/s3-secret-key",
        "sign-key-0:/run/secrets/niks3/cache-1.sec",
    ]))
    check("GC roots dir writable despite ProtectSystem=strict",
          "/nix/var/nix/gcroots/niks3" in c.get("ReadWritePaths", []), str(c.get("ReadWritePaths")))
    check_no_secret_leak(d, ["/run/secrets/"])

    pg = d["services"]["postgresql"]
    eq("postgresql enabled", pg.get("enable"), True)
    eq("ensureDatabases", pg.get("ensureDatabases"), ["niks3"])
    eq("ensureUsers with DB ownership", pg.get("ensureUsers"), [{"name": "niks3", "ensureDBOwnership": True}])

    vh = d["services"]["nginx"].get("virtualHosts", {}).get("cache.example.org", {})
    eq("nginx vhost ACME + forceSSL", (vh.get("enableACME"), vh.get("forceSSL")), (True, True))
    eq("nginx proxies / to httpAddr", vh.get("locations", {}).get("/", {}).get("proxyPass"), "http://127.0.0.1:5751")
    api = vh.get("locations", {}).get("/api/", {})
    check("nginx streams pushes (no body limit, no request buffering)",
          "client_max_body_size 0;" in api.get("extraConfig", "")
          and "proxy_request_buffering off;" in api.get("extraConfig", ""), api.get("extraConfig"))
    eq("firewall opens 80 and 443", d["networking"].get("firewall", {}).get("allowedTCPPorts"), [80, 443])

    g = sc(d, "niks3-gc")
    eq("niks3-gc.service is oneshot", g.get("Type"), "oneshot")
    eq("niks3-gc ExecStart", g.get("ExecStart"),
       f"{STUB}niks3/bin/niks3 gc --server http://127.0.0.1:5751 "
       "--auth-token-file ${CREDENTIALS_DIRECTORY}/api-token --older-than=720h --failed-uploads-older-than=6h")
    eq("niks3-gc presents its own gc token (gc.tokenFile), not the admin token", g.get("LoadCredential"),
       ["api-token:/run/secrets/niks3/gc-token"])
    check_hardening(d, "niks3-gc")
    eq("niks3-gc after niks3.service", svc(d, "niks3-gc").get("after"), ["niks3.service"])
    t = d["systemd"].get("timers", {}).get("niks3-gc", {})
    tc = t.get("timerConfig", {})
    eq("timer OnCalendar=daily", tc.get("OnCalendar"), "daily")
    eq("timer RandomizedDelaySec=1800", tc.get("RandomizedDelaySec"), 1800)
    eq("timer Persistent=true", tc.get("Persistent"), True)
    eq("timer wanted by timers.target", t.get("wantedBy"), ["timers.target"])

    check("no post-build-hook without services.niks3.hook", "post-build-hook" not in d["nix"].get("settings", {}))
    check("no drainer without hook.serverUrl", svc(d, "niks3-drain") is None)
    eq("user niks3 is a system user", d["users"]["users"]["niks3"].get("isSystemUser"), True)
    systemd_units(d, "server-s3")


def embedded():
    print("== example embedded.nix (one machine: hook + local server + local store)")
    d = evaluate_example("embedded.nix")
    if not d:
        return
    check("warns that the token is generated while listening on all interfaces",
          any("apiTokenFile is null" in w for w in d["warnings"]), str(d["warnings"]))
    e = env_of(d, "niks3")
    c = sc(d, "niks3")
    eq("env NIKS3_STORAGE_DIR", e.get("NIKS3_STORAGE_DIR"), "/srv/niks3-cache")
    eq("env NIKS3_HTTP_ADDR all interfaces", e.get("NIKS3_HTTP_ADDR"), ":5751")
    check("no S3 settings", not any(k.startswith("NIKS3_S3_") for k in e), str(e))
    check("no key paths (the server generates a key)", "NIKS3_SIGN_KEY_PATHS" not in e)
    check("no token file (the server generates one)", "NIKS3_API_TOKEN_FILE" not in e)
    eq("no credentials to load", c.get("LoadCredential"), [])
    eq("the local server drains the local spool (no --no-spool)", c.get("ExecStart"),
       f"{STUB}niks3/bin/niks3 serve --priority 30")
    eq("ReadWritePaths: GC roots and the object directory", c.get("ReadWritePaths"),
       ["/nix/var/nix/gcroots/niks3", "/srv/niks3-cache"])
    eq("firewall opens 5751", d["networking"].get("firewall", {}).get("allowedTCPPorts"), [5751])
    eq("GC reaches the server on loopback with the generated token",
       (sc(d, "niks3-gc").get("LoadCredential"), "--server http://127.0.0.1:5751 " in sc(d, "niks3-gc").get("ExecStart", "")),
       (["api-token:/var/lib/niks3/api-token"], True))
    rules = d["systemd"].get("tmpfiles", {}).get("rules", [])
    for sub in ["", "/tmp", "/new", "/claimed", "/quarantine"]:
        check(f"tmpfiles creates spool{sub} owned by niks3",
              f"d /var/lib/niks3/spool{sub} 0750 niks3 niks3 - -" in rules, str(rules))
    check("tmpfiles creates the GC roots dir owned by niks3",
          "d /nix/var/nix/gcroots/niks3 0755 niks3 niks3 - -" in rules)
    check("tmpfiles creates the object directory", "d /srv/niks3-cache 0750 niks3 niks3 - -" in rules)
    eq("tmpfiles rules are not duplicated", len(rules), len(set(rules)))
    check_hook_wrapper(d)
    check("no drainer (the local server drains)", svc(d, "niks3-drain") is None)
    systemd_units(d, "embedded")
    tmpfiles_and_permissions(d, "embedded")


def check_hook_wrapper(d):
    hook = d["nix"].get("settings", {}).get("post-build-hook")
    check("nix.settings.post-build-hook is set", isinstance(hook, str) and hook.startswith("/nix/store/"), str(hook))
    if not (isinstance(hook, str) and os.path.isfile(hook)):
        check("post-build-hook wrapper readable", False, str(hook))
        return
    text = open(hook).read()
    check("wrapper exports NIKS3_SPOOL_DIR", "export NIKS3_SPOOL_DIR=/var/lib/niks3/spool\n" in text, text)
    check("wrapper exports NIKS3_GCROOTS_DIR", "export NIKS3_GCROOTS_DIR=/nix/var/nix/gcroots/niks3\n" in text, text)
    eq("hook.wrapper (read-only option) is the installed script", d["services"]["niks3"]["hook"].get("wrapper"), hook)
    check("wrapper execs niks3-hook", f"exec {STUB}niks3-hook/bin/niks3-hook\n" in text, text)
    p = subprocess.run(["bash", "-n", hook], capture_output=True, text=True)
    check("wrapper is valid shell (bash -n)", p.returncode == 0, p.stderr)


def builder_remote():
    print("== example builder-remote.nix (hook + niks3 drain to a remote server)")
    d = evaluate_example("builder-remote.nix")
    if not d:
        return
    check("no server, no GC, no database on a builder",
          svc(d, "niks3") is None and svc(d, "niks3-gc") is None and "niks3-gc" not in d["systemd"].get("timers", {})
          and not d["services"]["postgresql"].get("enable", False))
    c = sc(d, "niks3-drain")
    eq("niks3-drain ExecStart", c.get("ExecStart"),
       f"{STUB}niks3/bin/niks3 drain --server https://cache.example.org "
       "--auth-token-file ${CREDENTIALS_DIRECTORY}/api-token "
       "--spool-dir /var/lib/niks3/spool --gcroots-dir /nix/var/nix/gcroots/niks3 --compression-level 3")
    eq("niks3-drain presents the builder's push token", c.get("LoadCredential"),
       ["api-token:/run/secrets/niks3/push-token"])
    eq("niks3-drain restarts", c.get("Restart"), "always")
    eq("niks3-drain may write the spool's state dir", c.get("StateDirectory"), "niks3")
    eq("niks3-drain may remove GC roots", c.get("ReadWritePaths"), ["/nix/var/nix/gcroots/niks3"])
    eq("niks3-drain talks to nix-daemon", env_of(d, "niks3-drain").get("NIX_REMOTE"), "daemon")
    eq("niks3-drain requires nix-daemon", svc(d, "niks3-drain").get("requires"), ["nix-daemon.socket"])
    eq("niks3 may use nix-daemon where allowed-users is restricted",
       d["nix"]["settings"].get("extra-allowed-users"), ["niks3"])
    check_hardening(d, "niks3-drain")
    check_no_secret_leak(d, ["/run/secrets/"])
    check_hook_wrapper(d)
    eq("user niks3 exists on the builder", d["users"]["users"].get("niks3", {}).get("group"), "niks3")
    systemd_units(d, "builder-remote")
    tmpfiles_and_permissions(d, "builder-remote")


BASE_SERVER = """
    enable = true;
    signKeyFiles = [ "/run/secrets/k1.sec" ];
"""


def variants():
    print("== variants")
    rc, d, err = evaluate("{ ... }: { }")
    eq("module imported but nothing enabled: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        check("nothing enabled: no units, users, tmpfiles, hook or packages",
              not d["systemd"].get("services") and not d["systemd"].get("timers")
              and not d["systemd"].get("tmpfiles") and not d["users"] and not d["nix"]
              and not d["environment"] and not d["services"]["postgresql"] and not d["services"]["nginx"],
              json.dumps({k: d[k] for k in ("systemd", "users", "nix", "environment")})[:600])
    rc, d, err = evaluate("""{ ... }: { services.niks3 = {
        enable = true;
        database.urlFile = "/run/secrets/db-url";
        signKeyFiles = [ "/run/secrets/k1.sec" "/run/secrets/k2.sec" ];
        httpAddr = "0.0.0.0:8080";
        gc = { olderThan = "30d"; failedUploadsOlderThan = "1h30m"; schedule = "*-*-* 03:00:00"; randomizedDelaySec = 0; };
        environment.RUST_LOG = "niks3=debug";
        extraArgs = [ "--jobs" "4" ];
        compressionLevel = 7;
        maxNarSize = "8G";
      }; }""")
    eq("remote database: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        e, c = env_of(d, "niks3"), sc(d, "niks3")
        eq("NIKS3_DB_FILE from a credential", e.get("NIKS3_DB_FILE"), "%d/db-url")
        check("no peer connection string", "NIKS3_DB" not in e)
        check("db-url credential", "db-url:/run/secrets/db-url" in c.get("LoadCredential", []))
        check("no local postgresql", not d["services"]["postgresql"].get("enable", False)
              and "postgresql.service" not in svc(d, "niks3").get("after", []))
        eq("two signing keys, colon-separated", e.get("NIKS3_SIGN_KEY_PATHS"), "%d/sign-key-0:%d/sign-key-1")
        eq("extra env passed through", e.get("RUST_LOG"), "niks3=debug")
        eq("compressionLevel reaches the server", e.get("NIKS3_COMPRESSION_LEVEL"), "7")
        eq("maxNarSize reaches the server", e.get("NIKS3_MAX_NAR_SIZE"), "8G")
        check("extraArgs appended", c.get("ExecStart", "").endswith("serve --priority 30 --jobs 4"), c.get("ExecStart"))
        g = sc(d, "niks3-gc").get("ExecStart", "")
        check("GC maps 0.0.0.0 to loopback", "--server http://127.0.0.1:8080 " in g, g)
        check("GC durations passed", "--older-than=30d --failed-uploads-older-than=1h30m" in g, g)
        eq("GC schedule", d["systemd"]["timers"]["niks3-gc"]["timerConfig"]["OnCalendar"], "*-*-* 03:00:00")
        check("firewall closed by default", "allowedTCPPorts" not in d["networking"].get("firewall", {}))

    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        httpAddr = "[::]:443";
        gc.enable = false;
        hook = { enable = true; serverUrl = "https://other.example.org"; tokenFile = "/run/secrets/t"; };
        compressionLevel = 1;
      }; }""")
    eq("server + hook to another server: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        c = sc(d, "niks3")
        check("local server leaves the spool to niks3-drain (--no-spool)", "--no-spool" in c.get("ExecStart", ""))
        check("niks3-drain present", svc(d, "niks3-drain") is not None)
        drain = sc(d, "niks3-drain").get("ExecStart", "")
        check("niks3-drain compresses at compressionLevel", drain.endswith(" --compression-level 1"), drain)
        check("one serverUrl: one --server", drain.count("--server ") == 1, drain)
        eq("port 443 gets CAP_NET_BIND_SERVICE only", (c.get("AmbientCapabilities"), c.get("CapabilityBoundingSet")),
           ("CAP_NET_BIND_SERVICE", "CAP_NET_BIND_SERVICE"))
        eq("port 443: the server runs without PrivateUsers (a capability in a user namespace cannot bind it)",
           c.get("PrivateUsers"), False)
        eq("port 443: niks3-drain keeps PrivateUsers", sc(d, "niks3-drain").get("PrivateUsers"), True)
        check("gc.enable = false: no GC unit or timer",
              svc(d, "niks3-gc") is None and "niks3-gc" not in d["systemd"].get("timers", {}))
        rules = d["systemd"]["tmpfiles"]["rules"]
        eq("tmpfiles rules are not duplicated with both roles", len(rules), len(set(rules)))

    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        private = true;
      }; }""")
    eq("a private cache: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        eq("private reaches the server as NIKS3_PRIVATE", env_of(d, "niks3").get("NIKS3_PRIVATE"), "true")
    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """ }; }""")
    if d:
        eq("a public cache by default", env_of(d, "niks3").get("NIKS3_PRIVATE"), "false")
        eq("no OIDC by default", env_of(d, "niks3").get("NIKS3_OIDC_CONFIG"), None)
    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        oidcConfigFile = "/etc/niks3/oidc.toml";
      }; }""")
    eq("oidcConfigFile: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        eq("oidcConfigFile reaches the server as NIKS3_OIDC_CONFIG", env_of(d, "niks3").get("NIKS3_OIDC_CONFIG"),
           "/etc/niks3/oidc.toml")
    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        oidcConfigFile = "/etc/niks3/oidc.yaml";
      }; }""")
    check("oidcConfigFile of another format: refused, naming the option",
          d is not None and any("oidcConfigFile" in m and ".toml or .json" in m for m in d["failedAssertions"]),
          d and d["failedAssertions"])

    rc, d, err = evaluate("""{ ... }: { services.niks3.maxNarSize = "4GiB"; services.niks3.hook = { enable = true;
        tokenFile = "/run/secrets/t";
        serverUrl = [ "https://a.example.org" "http://b.example.org:5751" "https://c.example.org/it's" ]; }; }""")
    eq("hook with a list of servers: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        drain = sc(d, "niks3-drain").get("ExecStart", "")
        check("a list of servers: one --server each, in order, shell-quoted",
              "drain --server https://a.example.org --server http://b.example.org:5751 "
              "--server 'https://c.example.org/it'\\''s' --auth-token-file" in drain, drain)
        check("maxNarSize reaches niks3-drain", drain.endswith(" --max-nar-size 4GiB"), drain)
        check("the unit names every server", "a.example.org, http://b.example.org:5751" in
              svc(d, "niks3-drain").get("description", ""), svc(d, "niks3-drain").get("description"))
    expect_failure("hook with an empty server list", """{ ... }: {
        services.niks3.hook = { enable = true; serverUrl = [ ]; tokenFile = "/run/secrets/t"; }; }""",
                   r"serverUrl.*(non-empty|is not of type)")

    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        nginx = { enable = true; domain = "cache.lan"; enableACME = false; forceSSL = false; };
        apiTokenFile = "/run/secrets/t";
      }; }""")
    eq("nginx without TLS: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        eq("cache URL defaults to http://domain", env_of(d, "niks3").get("NIKS3_CACHE_URL"), "http://cache.lan")
        eq("without gc.tokenFile the GC timer presents the admin token", sc(d, "niks3-gc").get("LoadCredential"),
           ["api-token:/run/secrets/t"])

    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        hook.enable = true;
        hook.spoolDir = "/srv/spool";
      }; }""")
    eq("spool outside the state dir: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        c = sc(d, "niks3")
        check("spool outside the state dir is writable", "/srv/spool" in c.get("ReadWritePaths", []))
        eq("server drains the hook's spool", env_of(d, "niks3").get("NIKS3_SPOOL_DIR"), "/srv/spool")
        check("tmpfiles creates /srv/spool/new", "d /srv/spool/new 0750 niks3 niks3 - -" in d["systemd"]["tmpfiles"]["rules"])


def rejected():
    print("== misconfigurations are rejected with a clear message")
    expect_failure("partial S3", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        s3 = { endpoint = "https://s3.example.org"; bucket = "b"; }; }; }""",
                   r"all or nothing.*missing: accessKeyFile, secretKeyFile")
    expect_failure("S3 and storageDir", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        storageDir = "/srv/c"; s3 = { endpoint = "e"; bucket = "b"; accessKeyFile = "/run/a"; secretKeyFile = "/run/s"; };
      }; }""", r"storageDir and s3\.\* are two stores")
    expect_failure("S3 and the old storeDir", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        storeDir = "/srv/c"; s3 = { endpoint = "e"; bucket = "b"; accessKeyFile = "/run/a"; secretKeyFile = "/run/s"; };
      }; }""", r"storageDir and s3\.\* are two stores")
    expect_failure("nginx on a public domain without apiTokenFile", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        nginx = { enable = true; domain = "cache.example.org"; }; }; }""",
                   r"nginx publishes the push API on cache\.example\.org; set apiTokenFile")
    expect_failure("nginx without domain", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        apiTokenFile = "/run/t"; nginx.enable = true; }; }""", r"nginx\.enable needs services\.niks3\.nginx\.domain")
    expect_failure("no signing key and no generateSignKey", """{ ... }: { services.niks3.enable = true; }""",
                   r"signKeyFiles is empty.*generateSignKey = true")
    expect_failure("secret in the Nix store", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        apiTokenFile = "/nix/store/00000000000000000000000000000000-token"; }; }""",
                   r"secrets must be absolute runtime paths outside /nix/store.*services\.niks3\.apiTokenFile")
    expect_failure("gc token in the Nix store", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        gc.tokenFile = "/nix/store/00000000000000000000000000000000-gc-token"; }; }""",
                   r"secrets must be absolute runtime paths outside /nix/store.*services\.niks3\.gc\.tokenFile")
    expect_failure("relative secret path", """{ ... }: { services.niks3 = {
        enable = true; signKeyFiles = [ "keys/cache.sec" ]; }; }""",
                   r"services\.niks3\.signKeyFiles\[0\] = keys/cache\.sec")
    expect_failure("secret as a Nix path literal (would be copied into the store)", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        apiTokenFile = ./token; }; }""", r"services\.niks3\.apiTokenFile.*not of type")
    expect_failure("local database and urlFile", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        database = { createLocally = true; urlFile = "/run/db"; }; }; }""", r"createLocally = true and urlFile")
    expect_failure("no database at all", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        database.createLocally = false; }; }""", r"set urlFile .* or createLocally = true")
    expect_failure("hook without server", """{ ... }: { services.niks3.hook.enable = true; }""",
                   r"hook: serverUrl is null.*services\.niks3\.enable is false")
    expect_failure("hook serverUrl without tokenFile", """{ ... }: {
        services.niks3.hook = { enable = true; serverUrl = "https://c.example.org"; }; }""",
                   r"serverUrl = https://c\.example\.org needs hook\.tokenFile")
    expect_failure("bad GC duration", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        gc.olderThan = "30 days"; }; }""", r"services\.niks3\.gc\.olderThan.*not of type")
    expect_failure("compressionLevel outside 1..9", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        compressionLevel = 19; }; }""", r"services\.niks3\.compressionLevel.*not of type")
    expect_failure("maxNarSize not a size", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        maxNarSize = "8 gigs"; }; }""", r"services\.niks3\.maxNarSize.*not of type")
    expect_failure("httpAddr without port", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        httpAddr = "localhost"; }; }""", r"services\.niks3\.httpAddr.*not of type")
    expect_failure("setting the read-only hook.wrapper", """{ pkgs, ... }: {
        services.niks3.hook.wrapper = pkgs.hello; }""", r"services\.niks3\.hook\.wrapper.*read-only")
    expect_failure("unknown option", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        s3.acessKeyFile = "/run/a"; }; }""", r"services\.niks3\.s3\.acessKeyFile.*does not exist")


def nix_eval(file, **args):
    """nix-instantiate --eval --strict --json FILE with --arg/--argstr; returns (parsed or None, stderr)."""
    cmd = ["nix-instantiate", "--eval", "--strict", "--json", "--arg", "libPath", LIB]
    for k, v in args.items():
        cmd += ["--argstr", k, v]
    p = subprocess.run(cmd + [file], capture_output=True, text=True)
    return (json.loads(p.stdout) if p.returncode == 0 else None), p.stderr


def flake():
    print("== flake.nix (the parts that evaluate without nixpkgs)")
    d, err = nix_eval(os.path.join(ROOT, "nixos/tests/flake-eval.nix"))
    check("flake.nix evaluates", d is not None, err[-600:])
    if not d:
        return
    eq("inputs", d["inputs"], ["nixpkgs"])
    eq("outputs", d["outputNames"], ["checks", "devShells", "formatter", "nixosModules", "overlays", "packages"])
    pkg = os.path.join(ROOT, "nixos/package.nix")
    version = tomllib.load(open(os.path.join(ROOT, "Cargo.toml"), "rb"))["workspace"]["package"]["version"]
    eq("overlay: niks3 from nixos/package.nix at the workspace version",
       d["overlay"].get("niks3"), {"crate": "niks3", "file": pkg, "version": version})
    eq("overlay: niks3-hook from nixos/package.nix",
       d["overlay"].get("niks3-hook"), {"crate": "niks3-hook", "file": pkg, "version": version})
    check("package.nix takes src, version, crate, rustPlatform",
          {"src", "version", "crate", "rustPlatform"} <= set(d["packageArgs"]), str(d["packageArgs"]))
    eq("nixosModules.default imports nixos/module.nix", d["moduleDefaultImports"], [os.path.join(ROOT, "nixos/module.nix")])
    eq("checks: the three VM tests", d["checks"], {n: os.path.join(ROOT, f"nixos/tests/vm/{n}.nix") for n in ["cache", "gc", "server-down"]})
    flake_text = open(os.path.join(ROOT, "flake.nix")).read()
    members = tomllib.load(open(os.path.join(ROOT, "Cargo.toml"), "rb"))["workspace"]["members"]
    # A glob member (crates/*) is covered by its folder.
    dirs = [m.removesuffix("/*") for m in members]
    missing = [m for m in dirs + ["Cargo.toml", "Cargo.lock", "migrations"] if f"./{m}\n" not in flake_text]
    check("cargo source set lists every workspace member, Cargo.lock and migrations", not missing, str(missing))
    check("Cargo.lock feeds buildRustPackage", "cargoLock.lockFile = ../Cargo.lock;" in open(pkg).read())


VM_NODES = {
    "cache": ["builder", "client", "server"],
    "gc": ["machine"],
    "server-down": ["builder", "server"],
}


def vm_checks():
    print("== nixos/tests/vm/*.nix (the VM tests): test scripts are Python, nodes configure the module legally")
    for check_name, nodes in VM_NODES.items():
        d, err = nix_eval(os.path.join(ROOT, "nixos/tests/vm-checks.nix"), check=check_name)
        check(f"{check_name}: evaluates", d is not None, err[-600:])
        if not d:
            continue
        eq(f"{check_name}: nodes", d["nodes"], nodes)
        try:
            ast.parse(d["testScript"])
            check(f"{check_name}: testScript is valid Python", True)
        except SyntaxError as e:
            check(f"{check_name}: testScript is valid Python", False, f"{e.msg} at line {e.lineno}: {e.text}")
        for node in nodes:
            cfg = ("{ lib, ... }: { imports = [ ((import %s { inherit lib; }).nodes.%s) ]; }"
                   % (os.path.join(ROOT, f"nixos/tests/vm/{check_name}.nix"), json.dumps(node)))
            rc, nd, nerr = evaluate(cfg)
            eq(f"{check_name}/{node}: evaluates with no failed assertion", (rc, nd and nd["failedAssertions"]), (0, []))
            if not nd:
                continue
            hook = nd["nix"].get("settings", {}).get("post-build-hook")
            if node in ("builder", "machine"):
                check(f"{check_name}/{node}: post-build-hook installed", isinstance(hook, str))
            if node == "client":
                check("cache/client: no niks3 units, no hook", not any(k.startswith("niks3") for k in nd["systemd"].get("services", {})) and hook is None)
            if check_name == "cache" and node == "server":
                e = env_of(nd, "niks3")
                eq("cache/server: Garage endpoint and region", (e.get("NIKS3_S3_ENDPOINT"), e.get("NIKS3_S3_REGION")), ("http://127.0.0.1:3900", "garage"))
                eq("cache/server: started by the test script, not at boot", svc(nd, "niks3").get("wantedBy"), [])
                eq("cache/server: nginx vhost 'server' without TLS",
                   {k: v for k, v in nd["services"]["nginx"]["virtualHosts"]["server"].items() if k in ("enableACME", "forceSSL")},
                   {"enableACME": False, "forceSSL": False})
            if check_name in ("cache", "server-down") and node == "builder":
                x = sc(nd, "niks3-drain").get("ExecStart", "")
                check(f"{check_name}/builder: niks3-drain pushes to the server", " --server http://server" in x, x)


STUB_BIN = STUB + "niks3/bin/niks3"


def render_unit(name, unit, kind):
    """Renders one unit as NixOS does (systemd-lib: lists become repeated lines, booleans true/false,
    environment as JSON-quoted Environment= lines), with the stand-in binary replaced by /bin/true."""
    def val(v):
        return ("true" if v else "false") if isinstance(v, bool) else str(v)
    lines = ["[Unit]"]
    if "description" in unit:
        lines.append(f"Description={unit['description']}")
    for key, directive in [("after", "After"), ("before", "Before"), ("wants", "Wants"),
                           ("requires", "Requires"), ("documentation", "Documentation")]:
        if unit.get(key):
            lines.append(f"{directive}={' '.join(unit[key])}")
    section, cfg = ("Service", unit.get("serviceConfig", {})) if kind == "service" else ("Timer", unit.get("timerConfig", {}))
    lines.append(f"[{section}]")
    for k, v in unit.get("environment", {}).items():
        lines.append("Environment=" + json.dumps(f"{k}={v}"))
    for k, v in cfg.items():
        for x in (v if isinstance(v, list) else [v]):
            lines.append(f"{k}={val(x).replace(STUB_BIN, '/bin/true')}")
    if unit.get("wantedBy"):
        lines += ["[Install]", f"WantedBy={' '.join(unit['wantedBy'])}"]
    return "\n".join(lines) + "\n"


MAX_OFFLINE_EXPOSURE = 1.2


def systemd_units(d, example):
    """systemd-analyze verify (no unknown keys, bad values or syscall groups) and the exposure score."""
    if not shutil.which("systemd-analyze"):
        skip(f"{example}: systemd-analyze verify", "systemd-analyze not installed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for kind, plural in [("service", "services"), ("timer", "timers")]:
            for name, unit in d["systemd"].get(plural, {}).items():
                f = os.path.join(tmp, f"{name}.{kind}")
                with open(f, "w") as fh:
                    fh.write(render_unit(name, unit, kind))
                files.append(f)
        p = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no"] + files,
                           capture_output=True, text=True)
        out = (p.stdout + p.stderr).strip()
        check(f"{example}: systemd-analyze verify accepts {', '.join(os.path.basename(f) for f in files)}",
              p.returncode == 0 and out == "", out)
        for f in files:
            if not f.endswith(".service"):
                continue
            p = subprocess.run(["systemd-analyze", "security", "--offline=true", f], capture_output=True, text=True)
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout)
            score = float(m.group(1)) if m else None
            # The measured score (host systemd, offline): a module change loosening any scored setting
            # (PrivateUsers, ~@resources: 1.4 without either) fails here, and in the VM check (1.1 there).
            check(f"{example}: {os.path.basename(f)} exposure level {score} <= {MAX_OFFLINE_EXPOSURE} "
                  "(systemd-analyze security)",
                  score is not None and score <= MAX_OFFLINE_EXPOSURE, p.stdout[-400:] + p.stderr[-400:])
        for t in d["systemd"].get("timers", {}).values():
            cal = t["timerConfig"]["OnCalendar"]
            p = subprocess.run(["systemd-analyze", "calendar", cal], capture_output=True, text=True)
            check(f"{example}: OnCalendar={cal} is a valid calendar spec", p.returncode == 0, p.stderr)


def tmpfiles_and_permissions(d, example):
    """Creates the module's tmpfiles rules in a scratch root with the real systemd-tmpfiles, then checks
    with real kernel permission checks that root (the hook, inside nix-daemon) can queue and the niks3
    user (the drainer) can claim, acknowledge and remove GC roots."""
    if not shutil.which("systemd-tmpfiles") or os.geteuid() != 0 or not shutil.which("setpriv"):
        skip(f"{example}: tmpfiles + permissions", "needs root, systemd-tmpfiles and setpriv")
        return
    uid = 64990
    with tempfile.TemporaryDirectory() as root:
        os.chmod(root, 0o755)  # mkdtemp makes it 0700: the niks3 user must be able to traverse it
        os.makedirs(f"{root}/etc")
        with open(f"{root}/etc/passwd", "w") as fh:
            fh.write(f"root:x:0:0::/root:/bin/sh\nniks3:x:{uid}:{uid}::/var/lib/niks3:/bin/false\n")
        with open(f"{root}/etc/group", "w") as fh:
            fh.write(f"root:x:0:\nniks3:x:{uid}:\n")
        conf = f"{root}/niks3.conf"
        with open(conf, "w") as fh:
            fh.write("\n".join(d["systemd"]["tmpfiles"]["rules"]) + "\n")
        p = subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", conf], capture_output=True, text=True)
        check(f"{example}: systemd-tmpfiles --create applies the rules", p.returncode == 0 and not p.stderr.strip(), p.stderr)
        spool = f"{root}/var/lib/niks3/spool"
        gcroots = f"{root}/nix/var/nix/gcroots/niks3"
        for path, mode in [(spool, 0o750)] + [(f"{spool}/{s}", 0o750) for s in ("tmp", "new", "claimed", "quarantine")] + [(gcroots, 0o755)]:
            st = os.stat(path) if os.path.exists(path) else None
            eq(f"{example}: {path[len(root):]} is niks3:niks3 {oct(mode)}",
               st and (st.st_uid, st.st_gid, st.st_mode & 0o7777), (uid, uid, mode))
        # The hook's side, as root: an entry written like niks3-hook writes it, and a GC root.
        entry = f"{spool}/new/00000000000000000001-0000000001-000000"
        with open(f"{spool}/tmp/e", "w") as fh:
            fh.write("niks3-spool-v1\nout=/nix/store/00000000000000000000000000000000-x\nqueued=1\n")
        os.chmod(f"{spool}/tmp/e", 0o644)
        os.rename(f"{spool}/tmp/e", entry)
        os.symlink("/nix/store/00000000000000000000000000000000-x", f"{gcroots}/00000000000000000000000000000000-x")
        # The drainer's side, as the niks3 user: read, claim (rename), acknowledge (unlink), drop the root.
        as_niks3 = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-ec"]
        script = (f"cat {entry} >/dev/null; mv {entry} {spool}/claimed/; "
                  f"rm {spool}/claimed/{os.path.basename(entry)}; rm {gcroots}/00000000000000000000000000000000-x; "
                  f"touch {root}/var/lib/niks3/state-file")
        p = subprocess.run(as_niks3 + [script], capture_output=True, text=True)
        check(f"{example}: niks3 user claims, acks root-written entries and removes root-made GC roots",
              p.returncode == 0, p.stderr)
        p = subprocess.run(as_niks3 + [f"touch {root}/nix/var/nix/gcroots/other"], capture_output=True, text=True)
        check(f"{example}: niks3 user cannot write outside its directories", p.returncode != 0, "touch succeeded")


def cargo_bin(name, package):
    """Builds `package`'s binary `name` from this tree; returns its path or None (reported)."""
    p = subprocess.run(["cargo", "build", "--locked", "-q", "-p", package, "--bin", name],
                       cwd=ROOT, capture_output=True, text=True)
    check(f"cargo build -p {package} --bin {name}", p.returncode == 0, p.stderr[-800:])
    if p.returncode != 0:
        return None
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "debug", name)


def start_postgres(tmp):
    """A throwaway PostgreSQL on a unix socket in tmp/pg, run as the postgres user (initdb refuses
    root); returns (connection string, stop function) or None when the server binaries are missing."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins or subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        return None
    pg, bin_dir = f"{tmp}/pg", bins[-1]
    os.makedirs(pg, mode=0o700)
    shutil.chown(pg, "postgres", "postgres")
    as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    subprocess.run(as_pg + [f"{bin_dir}/initdb", "-D", f"{pg}/data", "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run(as_pg + [f"{bin_dir}/pg_ctl", "-D", f"{pg}/data", "-l", f"{pg}/log", "-w", "-o",
                            f"-c listen_addresses='' -c unix_socket_directories='{pg}' -c fsync=off", "start"],
                   check=True, capture_output=True)
    subprocess.run(as_pg + [f"{bin_dir}/createdb", "-h", pg, "-U", "postgres", "niks3"], check=True, capture_output=True)

    def stop():
        subprocess.run(as_pg + [f"{bin_dir}/pg_ctl", "-D", f"{pg}/data", "stop", "-m", "immediate"], capture_output=True)
    return f"host={pg} user=postgres dbname=niks3", stop


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, OSError):
        return None, ""


def wait_for(desc, pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def build_with_hook(desc, tag, env):
    """nix-build of a fresh one-line derivation under `env` (whose nix.conf installs the module's hook
    wrapper); checks that it succeeds and that the hook said nothing; returns the output path or None."""
    expr = (f'derivation {{ name = "niks3-nixos-eval-{tag}"; system = builtins.currentSystem; '
            f'builder = "/bin/sh"; args = [ "-c" "echo {tag} {time.time_ns()} > $out" ]; }}')
    p = subprocess.run(["nix-build", "--no-out-link", "-E", expr], env=env, capture_output=True, text=True)
    out = p.stdout.strip()
    check(f"{desc} succeeds", p.returncode == 0 and out.startswith("/nix/store/"), p.stderr[-800:])
    check(f"{desc}: the hook said nothing (no problem to report)", "niks3-hook:" not in p.stderr, p.stderr[-800:])
    return out if p.returncode == 0 else None


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hook_package_stand_in(tmp, hook_bin):
    """Writes TMP/extra.nix: the eval tool's stand-in packages with pkgs.niks3-hook replaced by the
    niks3-hook built from this tree, so the module's wrapper runs the real hook. Returns its path."""
    os.makedirs(f"{tmp}/hookpkg/bin")
    os.symlink(os.path.realpath(hook_bin), f"{tmp}/hookpkg/bin/niks3-hook")
    extra = f"{tmp}/extra.nix"
    with open(extra, "w") as fh:
        fh.write(f"""import {EXTRA} // {{
  niks3-hook = {{ type = "derivation"; name = "niks3-hook"; outPath = "{tmp}/hookpkg"; meta.mainProgram = "niks3-hook"; }};
}}""")
    return extra


def write_nix_conf(etc, hook):
    """A private, offline nix.conf (as testkit/src/nix.rs writes) with `hook` as post-build-hook."""
    with open(f"{etc}/nix.conf", "w") as fh:
        fh.write("sandbox = false\nsubstituters =\nbuild-users-group =\nexperimental-features = nix-command\n"
                 f"narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\npost-build-hook = {hook}\n")


GC_FIGURES = ["failed-uploads-deleted", "old-closures-deleted", "objects-marked-for-deletion",
              "objects-deleted-after-grace-period", "objects-failed-to-delete"]


def gc_unit(tmp, d, niks3):
    """niks3-gc.service's exact command line (the credential is the token the server generated) against
    the running server: it succeeds, prints the five figures, and deletes nothing (720h)."""
    unit = svc(d, "niks3-gc")
    creds = f"{tmp}/gc-credentials"
    os.makedirs(creds)
    shutil.copy(f"{tmp}/state/api-token", f"{creds}/api-token")
    args = [a.replace("${CREDENTIALS_DIRECTORY}", creds) for a in unit["serviceConfig"]["ExecStart"].split()[1:]]
    p = subprocess.run([niks3] + args, env={"PATH": os.environ["PATH"], "NO_COLOR": "1"},
                       capture_output=True, text=True, timeout=120)
    output = p.stdout + p.stderr
    check("niks3-gc.service's command line succeeds against the server", p.returncode == 0, output[-800:])
    normalised = output.replace("_", "-")
    check("its output carries the five figures", all(f in normalised for f in GC_FIGURES), output[-800:])
    print("         " + "\n         ".join(output.strip().splitlines()[-8:]))


def remote_builder(tmp, base, nix_env, extra):
    """A second 'machine' configured like nixos/examples/builder-remote.nix: its own spool, the module's
    hook wrapper, and `niks3 drain` run with the exact arguments of niks3-drain.service (the credential
    is the token the server generated) pushing to the server started above."""
    niks3 = os.environ.get("NIKS3_BIN") or cargo_bin("niks3", "niks3")
    if not niks3 or "--spool-dir" not in subprocess.run([niks3, "drain", "--help"], capture_output=True, text=True).stdout:
        skip("builder-remote: niks3 drain with the unit's command line", "`niks3 drain` is not implemented in this tree")
        return
    b = f"{tmp}/builder"
    cfg = f"{b}/config.nix"
    os.makedirs(f"{b}/etc")
    with open(cfg, "w") as fh:
        fh.write(f"""{{ ... }}: {{ services.niks3.hook = {{
  enable = true; serverUrl = "{base}"; tokenFile = "/run/secrets/niks3/api-token";
  spoolDir = "{b}/spool"; gcrootsDir = "{b}/gcroots";
}}; }}""")
    p = subprocess.run([TOOL, MODULE, cfg, extra], capture_output=True, text=True)
    check("builder-remote config evaluates", p.returncode == 0, p.stderr[-600:])
    if p.returncode != 0:
        return
    d = json.loads(p.stdout)
    wrapper = f"{b}/niks3-post-build-hook"
    with open(wrapper, "w") as fh:
        fh.write("#!" + shutil.which("bash") + "\n" + open(d["nix"]["settings"]["post-build-hook"]).read())
    os.chmod(wrapper, 0o755)
    for sub in ("tmp", "new", "claimed", "quarantine"):
        os.makedirs(f"{b}/spool/{sub}")
    os.makedirs(f"{b}/gcroots")
    write_nix_conf(f"{b}/etc", wrapper)
    env = {**nix_env, "NIX_CONF_DIR": f"{b}/etc"}
    out = build_with_hook("builder-remote: build with the hook", "remote", env)
    if not out:
        return
    eq("builder-remote: queued in its own spool", len(os.listdir(f"{b}/spool/new")), 1)
    creds = f"{b}/credentials"
    os.makedirs(creds)
    shutil.copy(f"{tmp}/state/api-token", f"{creds}/api-token")
    unit = svc(d, "niks3-drain")
    args = [a.replace("${CREDENTIALS_DIRECTORY}", creds) for a in unit["serviceConfig"]["ExecStart"].split()[1:]]
    denv = {"PATH": os.environ["PATH"], "NO_COLOR": "1", "NIX_CONF_DIR": f"{b}/etc", "XDG_CACHE_HOME": nix_env["XDG_CACHE_HOME"]}
    log = open(f"{b}/drain.log", "w")
    drain = subprocess.Popen([niks3] + args, env=denv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        name = os.path.basename(out)
        ok = wait_for("narinfo", lambda: http_get(f"{base}/{name[:32]}.narinfo")[0] == 200, 90)
        check("builder-remote: niks3 drain pushed the path to the server", ok, open(f"{b}/drain.log").read()[-1500:])
        check("builder-remote: its spool and GC roots are emptied",
              wait_for("drained", lambda: not os.listdir(f"{b}/spool/new") and not os.listdir(f"{b}/spool/claimed")
                       and not os.listdir(f"{b}/gcroots"), 30),
              str(os.listdir(f"{b}/spool/new") + os.listdir(f"{b}/spool/claimed") + os.listdir(f"{b}/gcroots")))
    finally:
        drain.send_signal(signal.SIGTERM)
        try:
            drain.wait(timeout=30)
        except subprocess.TimeoutExpired:
            drain.kill()
            drain.wait()
            check("builder-remote: niks3 drain stops on SIGTERM", False, "still running 30 s after SIGTERM")
        log.close()


def start_garage(tmp):
    """A single-node Garage S3 server (sqlite metadata, one key, one default bucket, SigV4, region
    `garage`) in tmp/garage; returns (endpoint, region, bucket, key id, secret, process) or None."""
    garage = shutil.which("garage") or os.path.expanduser("~/.cargo/bin/garage")
    if not os.path.exists(garage):
        return None
    g = f"{tmp}/garage"
    os.makedirs(f"{g}/meta")
    os.makedirs(f"{g}/data")
    s3, rpc, admin = free_port(), free_port(), free_port()
    with open(f"{g}/garage.toml", "w") as fh:
        fh.write(f"""metadata_dir = "{g}/meta"
data_dir = "{g}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{os.urandom(32).hex()}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
""")
    key_id, secret, bucket = "GK" + os.urandom(12).hex(), os.urandom(32).hex(), "niks3-nixos-eval"
    env = {**os.environ, "GARAGE_DEFAULT_ACCESS_KEY": key_id, "GARAGE_DEFAULT_SECRET_KEY": secret,
           "GARAGE_DEFAULT_BUCKET": bucket}
    log = open(f"{g}/log", "w")
    proc = subprocess.Popen([garage, "-c", f"{g}/garage.toml", "server", "--single-node", "--default-bucket"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{s3}"
    if not wait_for("garage", lambda: http_get(f"{endpoint}/{bucket}")[0] in (200, 403) or proc.poll() is not None, 30) \
            or proc.poll() is not None:
        proc.kill()
        proc.wait()
        check("garage starts", False, open(f"{g}/log").read()[-800:])
        return None
    return endpoint, "garage", bucket, key_id, secret, proc


def install_wrapper(d, directory):
    """The post-build-hook wrapper the module generated, made executable as pkgs.writeShellScript does
    (the stand-in keeps only the text, in a read-only store file)."""
    wrapper = f"{directory}/niks3-post-build-hook"
    with open(wrapper, "w") as fh:
        fh.write("#!" + shutil.which("bash") + "\n" + open(d["nix"]["settings"]["post-build-hook"]).read())
    os.chmod(wrapper, 0o755)
    return wrapper


def s3_end_to_end():
    """The S3 setup of the module (like nixos/examples/server-s3.nix, without nginx), run for real: a
    single-node Garage, secrets handed over as credentials (`%d`), a signing key made with
    `niks3 key generate`; `niks3 serve` with the unit's exact environment drains the hook's spool into
    the bucket, and the path substitutes through the read proxy with the key trusted."""
    print("== end to end: the S3 setup as the module configures it (Garage, credentials, niks3 key generate)")
    if "todo!(" in open(os.path.join(ROOT, "crates/spool/src/lib.rs")).read() or os.geteuid() != 0:
        skip("S3 setup", "needs root and an implemented niks3-hook")
        return
    hook_bin = os.environ.get("NIKS3_HOOK_BIN") or cargo_bin("niks3-hook", "niks3-spool")
    niks3 = os.environ.get("NIKS3_BIN") or cargo_bin("niks3", "niks3")
    if not hook_bin or not niks3:
        return
    if "--http-addr" not in subprocess.run([niks3, "serve", "--help"], capture_output=True, text=True).stdout:
        skip("S3 setup", "`niks3 serve` is not implemented in this tree")
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        garage = start_garage(tmp)
        if garage is None:
            skip("S3 setup", "garage is not installed (scripts/install-deps.sh --test installs it)")
            return
        endpoint, region, bucket, key_id, secret, garage_proc = garage
        pg = start_postgres(tmp)
        if pg is None:
            garage_proc.kill()
            garage_proc.wait()
            skip("S3 setup", "needs PostgreSQL server binaries and a postgres user")
            return
        conn, stop_pg = pg
        server = None
        try:
            extra = hook_package_stand_in(tmp, hook_bin)
            with open(f"{tmp}/config.nix", "w") as fh:
                fh.write(f"""{{ ... }}: {{ services.niks3 = {{
  enable = true;
  httpAddr = "127.0.0.1:{port}";
  s3 = {{ endpoint = "{endpoint}"; bucket = "{bucket}"; region = "{region}";
         accessKeyFile = "/run/secrets/niks3/s3-access-key"; secretKeyFile = "/run/secrets/niks3/s3-secret-key"; }};
  apiTokenFile = "/run/secrets/niks3/api-token";
  signKeyFiles = [ "/run/secrets/niks3/cache-1.sec" ];
  hook = {{ enable = true; spoolDir = "{tmp}/spool"; gcrootsDir = "{tmp}/gcroots"; }};
}}; }}""")
            p = subprocess.run([TOOL, MODULE, f"{tmp}/config.nix", extra], capture_output=True, text=True)
            check("S3 config evaluates", p.returncode == 0, p.stderr[-600:])
            if p.returncode != 0:
                return
            d = json.loads(p.stdout)
            unit = svc(d, "niks3")
            # systemd's LoadCredential, done by hand: each credential is a copy of its source under %d.
            secrets = f"{tmp}/run-secrets"
            os.makedirs(secrets, mode=0o700)
            for name, value in [("s3-access-key", key_id), ("s3-secret-key", secret),
                                ("api-token", os.urandom(24).hex())]:
                with open(f"{secrets}/{name}", "w") as fh:
                    fh.write(value)
            p = subprocess.run([niks3, "key", "generate", "--name", "cache-1", "--secret-out", f"{secrets}/cache-1.sec",
                                "--public-out", f"{tmp}/cache-1.pub"], capture_output=True, text=True)
            check("niks3 key generate makes the signing key", p.returncode == 0, p.stderr[-400:])
            creds = f"{tmp}/credentials"
            os.makedirs(creds, mode=0o700)
            for entry in unit["serviceConfig"]["LoadCredential"]:
                cred, source = entry.split(":", 1)
                shutil.copy(source.replace("/run/secrets/niks3", secrets), f"{creds}/{cred}")
            eq("credentials loaded", sorted(os.listdir(creds)),
               ["api-token", "s3-access-key", "s3-secret-key", "sign-key-0"])
            for sub in ("tmp", "new", "claimed", "quarantine"):
                os.makedirs(f"{tmp}/spool/{sub}")
            os.makedirs(f"{tmp}/gcroots")
            os.makedirs(f"{tmp}/etc")
            write_nix_conf(f"{tmp}/etc", install_wrapper(d, tmp))
            nix_env = {k: v for k, v in os.environ.items() if k not in ("NIX_REMOTE", "NIX_CONFIG", "NIX_PATH")}
            nix_env.update(NIX_CONF_DIR=f"{tmp}/etc", XDG_CACHE_HOME=f"{tmp}/cache-xdg")
            env = {"PATH": os.environ["PATH"], "NO_COLOR": "1", "NIX_CONF_DIR": f"{tmp}/etc",
                   "XDG_CACHE_HOME": f"{tmp}/cache-xdg"}
            for k, v in unit["environment"].items():
                if k == "NIX_REMOTE":
                    continue
                env[k] = {"NIKS3_STATE_DIR": f"{tmp}/state", "NIKS3_DB": conn}.get(k, v.replace("%d", creds))
            log = open(f"{tmp}/serve.log", "w")
            server = subprocess.Popen([niks3] + unit["serviceConfig"]["ExecStart"].split()[1:], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{port}"
            wait_for("health", lambda: http_get(f"{base}/health")[0] == 200 or server.poll() is not None, 90)
            serving = server.poll() is None and http_get(f"{base}/health")[0] == 200
            check("niks3 serve starts with S3 credentials from %d and answers /health", serving,
                  open(f"{tmp}/serve.log").read()[-1500:])
            if not serving:
                return
            out = build_with_hook("build with the hook", "s3", nix_env)
            if not out:
                return
            name = os.path.basename(out)
            ok = wait_for("narinfo", lambda: http_get(f"{base}/{name[:32]}.narinfo")[0] == 200, 90)
            check("the path went through the bucket and is served by the read proxy", ok,
                  open(f"{tmp}/serve.log").read()[-1500:])
            narinfo = http_get(f"{base}/{name[:32]}.narinfo")[1]
            check("its narinfo is signed with the key from the credential", "Sig: cache-1:" in narinfo, narinfo)
            pub = open(f"{tmp}/cache-1.pub").read().strip()
            p = subprocess.run(["nix", "copy", "--from", base, "--to", f"{tmp}/chroot",
                                "--option", "trusted-public-keys", pub, out], env=nix_env, capture_output=True, text=True)
            check("it substitutes into an empty store with cache-1 trusted",
                  p.returncode == 0 and os.path.exists(f"{tmp}/chroot{out}"), p.stderr[-800:])
            objects = sum(len(files) for _, _, files in os.walk(f"{tmp}/garage/data"))
            check("the objects are in Garage's data directory", objects > 0, str(objects))
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            garage_proc.kill()
            garage_proc.wait()
            stop_pg()


def single_host_end_to_end():
    """The one-machine setup of the module, run for real without systemd: the post-build-hook wrapper
    the module generates is installed in a real Nix (2.8, offline) with the real niks3-hook built from
    this tree; a build stays green, is queued in the configured spool and gets its GC root. Then (once
    `niks3 serve` is implemented) the server runs with exactly the environment and arguments of the
    module's niks3.service (paths moved into a scratch directory, a throwaway PostgreSQL instead of
    services.postgresql, no nix-daemon here), drains that spool, and the path substitutes from its
    read proxy into an empty store with the generated key trusted."""
    print("== end to end: one machine as the module configures it (real Nix, niks3-hook, niks3 serve, PostgreSQL)")
    hook_bin = os.environ.get("NIKS3_HOOK_BIN")
    if not hook_bin:
        lib_rs = open(os.path.join(ROOT, "crates/spool/src/lib.rs")).read()
        if "todo!(" in lib_rs:
            skip("hook wrapper under real Nix", "niks3-hook is not implemented in this tree (crates/spool/src/lib.rs has todo!())")
            return
        hook_bin = cargo_bin("niks3-hook", "niks3-spool")
        if not hook_bin:
            return
    if os.geteuid() != 0 or not shutil.which("nix-build"):
        skip("hook wrapper under real Nix", "needs root and nix-build (single-user Nix writes /nix/store)")
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # the postgres user must traverse it
        extra = hook_package_stand_in(tmp, hook_bin)
        cfg = f"{tmp}/config.nix"
        with open(cfg, "w") as fh:
            fh.write(f"""{{ ... }}: {{ services.niks3 = {{
  enable = true; generateSignKey = true;
  httpAddr = "127.0.0.1:{port}";
  storageDir = "{tmp}/cache";
  hook = {{ enable = true; spoolDir = "{tmp}/spool"; gcrootsDir = "{tmp}/gcroots"; }};
}}; }}""")
        p = subprocess.run([TOOL, MODULE, cfg, extra], capture_output=True, text=True)
        check("one-machine config with scratch paths evaluates", p.returncode == 0, p.stderr[-600:])
        if p.returncode != 0:
            return
        d = json.loads(p.stdout)
        text = open(d["nix"]["settings"]["post-build-hook"]).read()
        # pkgs.writeShellScript writes `#!<bash>` + the text into an executable file; the stand-in
        # keeps only the text, in a read-only store file, so give it the same shape here.
        wrapper = f"{tmp}/niks3-post-build-hook"
        with open(wrapper, "w") as fh:
            fh.write("#!" + shutil.which("bash") + "\n" + text)
        os.chmod(wrapper, 0o755)
        # What the module's tmpfiles rules create (checked above with systemd-tmpfiles).
        for sub in ("tmp", "new", "claimed", "quarantine"):
            os.makedirs(f"{tmp}/spool/{sub}")
        os.makedirs(f"{tmp}/gcroots")
        os.makedirs(f"{tmp}/etc")
        write_nix_conf(f"{tmp}/etc", wrapper)
        nix_env = {k: v for k, v in os.environ.items() if k not in ("NIX_REMOTE", "NIX_CONFIG", "NIX_PATH")}
        nix_env.update(NIX_CONF_DIR=f"{tmp}/etc", XDG_CACHE_HOME=f"{tmp}/cache-xdg")

        out = build_with_hook("build first with the hook", "first", nix_env)
        if not out:
            return
        entries = sorted(os.listdir(f"{tmp}/spool/new"))
        eq("one entry queued in the module's spool", len(entries), 1)
        if entries:
            body = open(f"{tmp}/spool/new/{entries[0]}").read()
            check("the entry names the built output", f"\nout={out}\n" in body and body.startswith("niks3-spool-v1\n"), body)
        root = f"{tmp}/gcroots/{os.path.basename(out)}"
        eq("a GC root for the output in the module's gcrootsDir", os.path.islink(root) and os.readlink(root), out)
        eq("nothing left in spool/tmp", os.listdir(f"{tmp}/spool/tmp"), [])

        # The server, as niks3.service would run it.
        niks3 = os.environ.get("NIKS3_BIN") or cargo_bin("niks3", "niks3")
        if not niks3:
            return
        help_out = subprocess.run([niks3, "serve", "--help"], capture_output=True, text=True).stdout
        if "--http-addr" not in help_out:
            skip("niks3 serve with the unit's environment", "`niks3 serve` is not implemented in this tree")
            return
        pg = start_postgres(tmp)
        if pg is None:
            skip("niks3 serve with the unit's environment", "needs PostgreSQL server binaries and a postgres user")
            return
        conn, stop_pg = pg
        unit = svc(d, "niks3")
        env = {"PATH": os.environ["PATH"], "NO_COLOR": "1", **{k: v for k, v in nix_env.items() if k in ("NIX_CONF_DIR", "XDG_CACHE_HOME")}}
        for k, v in unit["environment"].items():
            if k == "NIX_REMOTE":
                continue  # no nix-daemon on this machine: root reads the store directly
            env[k] = {"NIKS3_STATE_DIR": f"{tmp}/state", "NIKS3_DB": conn}.get(k, v)
        args = unit["serviceConfig"]["ExecStart"].split()[1:]
        log = open(f"{tmp}/serve.log", "w")
        server = subprocess.Popen([niks3] + args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for("health", lambda: http_get(f"{base}/health")[0] == 200 or server.poll() is not None, 90)
            serving = server.poll() is None and http_get(f"{base}/health")[0] == 200
            check("niks3 serve starts with the unit's environment and answers /health",
                  serving, open(f"{tmp}/serve.log").read()[-1500:])
            if server.poll() is not None:
                return
            second = build_with_hook("build second with the hook", "second", nix_env)
            check("the server drains the spool the hook filled (new/ and claimed/ empty)",
                  wait_for("spool", lambda: not os.listdir(f"{tmp}/spool/new") and not os.listdir(f"{tmp}/spool/claimed"), 90),
                  str(os.listdir(f"{tmp}/spool/new") + os.listdir(f"{tmp}/spool/claimed")))
            for o in [out] + ([second] if second else []):
                name = os.path.basename(o)
                ok = serving and wait_for("narinfo", lambda: http_get(f"{base}/{name[:32]}.narinfo")[0] == 200, 60)
                check(f"{name[33:]} is served by the read proxy", ok, "" if serving else "the HTTP server is not up")
            check("GC roots removed after upload", wait_for("gcroots", lambda: not os.listdir(f"{tmp}/gcroots"), 30),
                  str(os.listdir(f"{tmp}/gcroots")))
            eq("nothing quarantined", os.listdir(f"{tmp}/spool/quarantine"), [])
            pubs = glob.glob(f"{tmp}/state/keys/*.pub")
            eq("one signing key generated in the state directory", len(pubs), 1)
            if pubs and second and serving:
                pub = open(pubs[0]).read().strip()
                p = subprocess.run(["nix", "copy", "--from", base, "--to", f"{tmp}/chroot",
                                    "--option", "trusted-public-keys", pub, second],
                                   env={**nix_env, "NIX_CONF_DIR": f"{tmp}/etc"}, capture_output=True, text=True)
                check("the path substitutes from the read proxy into an empty store, signature checked",
                      p.returncode == 0 and os.path.exists(f"{tmp}/chroot{second}"), p.stderr[-800:])
            elif not serving:
                check("the path substitutes from the read proxy into an empty store, signature checked",
                      False, "the HTTP server is not up")
            if serving:
                remote_builder(tmp, base, nix_env, extra)
                gc_unit(tmp, d, niks3)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                rc = server.wait(timeout=30)
                check("niks3 serve stops on SIGTERM", True, "")
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                rc = None
                check("niks3 serve stops on SIGTERM", False, "still running 30 s after SIGTERM")
            log.close()
            stop_pg()
            if rc not in (0, None, -signal.SIGTERM):
                print(f"         (niks3 serve exited with {rc})")

def options_documented():
    print("== every option has a description and a row in docs/nixos.md")
    stubs = os.path.join(os.path.dirname(os.path.realpath(TOOL)), "stubs.nix")
    cmd = ["nix-instantiate", "--eval", "--strict", "--json", "--arg", "libPath", LIB, "--arg", "stubsPath", stubs,
           os.path.join(ROOT, "nixos/tests/options.nix")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    check("options evaluate", p.returncode == 0, p.stderr[-600:])
    if p.returncode != 0:
        return
    declared = json.loads(p.stdout)
    # What the manual shows: not the submodule's own machinery (settings._module.*, internal) and not
    # the alias left by mkRenamedOptionModule (invisible).
    options = [o for o in declared if o["visible"] and not o["internal"]]
    check("services.niks3 declares options", len(options) > 30, str(len(options)))
    old = [o for o in declared if o["name"] == "services.niks3.storeDir"]
    check("the old storeDir is declared (as an alias) but hidden from the manual",
          len(old) == 1 and not old[0]["visible"], str(old))
    role_files(options)
    undocumented = [o["name"] for o in options if len(o["description"].strip()) < 20]
    check("every option has a description", not undocumented, str(undocumented))
    doc = open(os.path.join(ROOT, "docs/nixos.md")).read()
    table = doc.split("## Options", 1)[1].split("\n## ", 1)[0] if "## Options" in doc else ""
    listed = set()
    for cell in re.findall(r"^\| ([^|]*)\|", table, re.M):
        for name in re.findall(r"`([A-Za-z0-9_.{},]+)`", cell):
            m = re.match(r"(.*)\{(.*)\}$", name)
            for n in ([m.group(1) + x for x in m.group(2).split(",")] if m else [name]):
                listed.add(n.removeprefix("services.niks3."))
    missing = [o["name"] for o in options if o["name"].removeprefix("services.niks3.") not in listed]
    check("docs/nixos.md's option table lists every option", not missing, str(missing))
    unknown = sorted(n for n in listed if "services.niks3." + n not in {o["name"] for o in options})
    check("docs/nixos.md's option table lists no option that does not exist", not unknown, str(unknown))


# Which role file declares which options (nixos/modules/niks3/; the package is shared: default.nix).
ROLE_OF = [
    ("services.niks3.package", "default.nix"),
    ("services.niks3.gc.", "gc.nix"),
    ("services.niks3.nginx.", "nginx.nix"),
    ("services.niks3.hook.serverUrl", "drainer.nix"),
    ("services.niks3.hook.tokenFile", "drainer.nix"),
    ("services.niks3.hook.", "hook.nix"),
    ("services.niks3.", "server.nix"),
]


def role_files(options):
    """Every option is declared in its role's file, and the entry point only imports the role files."""
    roles = os.path.join(ROOT, "nixos/modules/niks3")
    for f in ["default.nix", "server.nix", "gc.nix", "nginx.nix", "hook.nix", "drainer.nix", "lib.nix"]:
        check(f"nixos/modules/niks3/{f} exists", os.path.isfile(os.path.join(roles, f)))
    entry = open(MODULE).read()
    check("nixos/module.nix only imports ./modules/niks3",
          re.sub(r"#.*", "", entry).split() == ["{", "imports", "=", "[", "./modules/niks3", "];", "}"], entry)
    wrong = []
    for o in options:
        want = next(f for prefix, f in ROLE_OF if o["name"].startswith(prefix))
        # A directory import declares as the directory itself (default.nix).
        got = [d[len(roles) + 1:] if d != roles else "default.nix" for d in o["declarations"] if d.startswith(roles)]
        if got != [want]:
            wrong.append(f"{o['name']}: {got}, want {want}")
    check("each option is declared in its role file (server, gc, nginx, hook, drainer; package in default.nix)",
          not wrong, "; ".join(wrong))


def settings_rendered():
    print("== settings (RFC 42): rendered to the server's NIKS3_* environment")
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/extra.conf", "w") as fh:
            fh.write("not a secret\n")
        rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        settings = {
          s3_path_style = false;
          nix_store_dir = "/nix/store";
          jobs = 4;
          priority = 10;
          http_addr = "[::]:8443";
          compression_level = 5;
          some_flag = true;
          some_path = %s/extra.conf;
          cache_url = null;
        };
        environment.NIKS3_JOBS = "2";
      }; }""" % tmp)
    eq("settings of every kind: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        e, c = env_of(d, "niks3"), sc(d, "niks3")
        eq("bool false renders as false (s3_path_style → NIKS3_S3_PATH_STYLE)", e.get("NIKS3_S3_PATH_STYLE"), "false")
        eq("bool true renders as true", e.get("NIKS3_SOME_FLAG"), "true")
        eq("string as is (nix_store_dir → NIKS3_NIX_STORE_DIR)", e.get("NIKS3_NIX_STORE_DIR"), "/nix/store")
        eq("compression_level (typed, overrides compressionLevel) renders as a string",
           e.get("NIKS3_COMPRESSION_LEVEL"), "5")
        eq("http_addr (typed, overrides httpAddr) → NIKS3_HTTP_ADDR", e.get("NIKS3_HTTP_ADDR"), "[::]:8443")
        p = e.get("NIKS3_SOME_PATH", "")
        check("a path renders as its store path", re.fullmatch(r"/nix/store/[a-z0-9]{32}-extra\.conf", p) is not None, p)
        check("null entries are left out (cache_url = null: no NIKS3_CACHE_URL)", "NIKS3_CACHE_URL" not in e, str(e))
        eq("environment overrides settings (NIKS3_JOBS)", e.get("NIKS3_JOBS"), "2")
        eq("priority is the --priority argument, not the environment",
           (c.get("ExecStart"), "NIKS3_PRIORITY" in e), (f"{STUB}niks3/bin/niks3 serve --priority 10", False))
        g = sc(d, "niks3-gc").get("ExecStart", "")
        # Quoted for the shell-like ExecStart syntax (systemd removes the quotes; brackets are not "safe").
        check("the GC client follows settings.http_addr ([::] → [::1])", "--server 'http://[::1]:8443' " in g, g)
        check("no CAP_NET_BIND_SERVICE for port 8443", c.get("AmbientCapabilities") == "", str(c.get("AmbientCapabilities")))
        check("no secret-looking variable from settings",
              not any(k in e for k in ("NIKS3_API_TOKEN", "NIKS3_S3_ACCESS_KEY", "NIKS3_S3_SECRET_KEY")), str(e))

    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        httpAddr = "0.0.0.0:80"; priority = 50; jobs = 3; storageDir = "/srv/objects";
        cacheUrl = "https://c.example.org"; openFirewall = true;
      }; }""")
    eq("typed options only: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        e, c = env_of(d, "niks3"), sc(d, "niks3")
        st = d["services"]["niks3"]["settings"]
        eq("the typed options set their settings entries",
           {k: st.get(k) for k in ("http_addr", "priority", "jobs", "compression_level", "storage_dir", "cache_url")},
           {"http_addr": "0.0.0.0:80", "priority": 50, "jobs": 3, "compression_level": 3,
            "storage_dir": "/srv/objects", "cache_url": "https://c.example.org"})
        eq("...and reach the environment",
           {k: e.get(k) for k in ("NIKS3_HTTP_ADDR", "NIKS3_JOBS", "NIKS3_COMPRESSION_LEVEL", "NIKS3_STORAGE_DIR", "NIKS3_CACHE_URL")},
           {"NIKS3_HTTP_ADDR": "0.0.0.0:80", "NIKS3_JOBS": "3", "NIKS3_COMPRESSION_LEVEL": "3",
            "NIKS3_STORAGE_DIR": "/srv/objects", "NIKS3_CACHE_URL": "https://c.example.org"})
        check("priority 50 on the command line", c.get("ExecStart", "").endswith("serve --priority 50"), c.get("ExecStart"))
        eq("firewall opens the port of settings.http_addr", d["networking"]["firewall"].get("allowedTCPPorts"), [80])
        eq("port 80 gets CAP_NET_BIND_SERVICE", c.get("AmbientCapabilities"), "CAP_NET_BIND_SERVICE")
        check("no S3 settings without s3.*", not any(k.startswith("s3_") for k in st), str(st))

    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        s3 = { endpoint = "https://s3.example.org"; bucket = "b"; accessKeyFile = "/run/a"; secretKeyFile = "/run/s"; };
        settings.s3_region = "eu-central-1";
      }; }""")
    eq("S3 with a region from settings: evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        e = env_of(d, "niks3")
        st = d["services"]["niks3"]["settings"]
        eq("s3.* set the S3 entries of settings; settings.s3_region wins over s3.region",
           {k: st.get(k) for k in ("s3_endpoint", "s3_bucket", "s3_region", "s3_use_ssl")},
           {"s3_endpoint": "https://s3.example.org", "s3_bucket": "b", "s3_region": "eu-central-1", "s3_use_ssl": True})
        eq("S3 environment", {k: e.get(k) for k in ("NIKS3_S3_ENDPOINT", "NIKS3_S3_BUCKET", "NIKS3_S3_REGION", "NIKS3_S3_USE_SSL")},
           {"NIKS3_S3_ENDPOINT": "https://s3.example.org", "NIKS3_S3_BUCKET": "b", "NIKS3_S3_REGION": "eu-central-1",
            "NIKS3_S3_USE_SSL": "true"})
        check("the S3 keys stay credentials", "NIKS3_S3_ACCESS_KEY" not in e and e.get("NIKS3_S3_ACCESS_KEY_FILE") == "%d/s3-access-key")

    for key, option in [("api_token", "apiTokenFile"), ("api_token_file", "apiTokenFile"),
                        ("s3_access_key", r"s3\.accessKeyFile"), ("s3_secret_key_file", r"s3\.secretKeyFile"),
                        ("db", "database"), ("db_file", r"database\.urlFile"), ("sign_key_paths", "signKeyFiles"),
                        ("spool_dir", r"hook\.spoolDir"), ("gcroots_dir", r"hook\.gcrootsDir"),
                        ("no_spool", r"hook\.serverUrl"), ("state_dir", "StateDirectory")]:
        expect_failure(f"settings.{key} (a secret or set by the module)", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        settings.%s = "/run/secrets/x"; }; }""" % key,
                       r"services\.niks3\.settings: %s is not a setting \(set [^)]*%s" % (key, option))
    expect_failure("settings key that is no variable name", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        settings.HTTP_ADDR = ":5751"; }; }""", r"services\.niks3\.settings: keys are the lower-case names.*not: HTTP_ADDR")
    expect_failure("settings.http_addr without port", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        settings.http_addr = "localhost"; }; }""", r"services\.niks3\.settings\.http_addr.*not of type")
    expect_failure("settings value that is an attribute set", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        settings.s3 = { bucket = "b"; }; }; }""", r"services\.niks3\.settings\.s3.*not of type")


def renamed_option():
    print("== services.niks3.storeDir is renamed to storageDir (mkRenamedOptionModule)")
    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        storeDir = "/srv/old-name"; }; }""")
    eq("the old storeDir still evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        e, c = env_of(d, "niks3"), sc(d, "niks3")
        eq("storeDir still sets NIKS3_STORAGE_DIR", e.get("NIKS3_STORAGE_DIR"), "/srv/old-name")
        eq("...and storageDir", d["services"]["niks3"].get("storageDir"), "/srv/old-name")
        check("...its directory is writable and created",
              "/srv/old-name" in c.get("ReadWritePaths", [])
              and "d /srv/old-name 0750 niks3 niks3 - -" in d["systemd"]["tmpfiles"]["rules"])
        check("the old name warns, naming the new one",
              any("services.niks3.storeDir" in w and "renamed to `services.niks3.storageDir'" in w for w in d["warnings"]),
              str(d["warnings"]))
    rc, d, err = evaluate("""{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        storageDir = "/srv/new-name"; }; }""")
    eq("storageDir evaluates", (rc, d and d["failedAssertions"]), (0, []))
    if d:
        eq("storageDir sets NIKS3_STORAGE_DIR", env_of(d, "niks3").get("NIKS3_STORAGE_DIR"), "/srv/new-name")
        eq("storageDir does not warn", d["warnings"], [])
    expect_failure("storeDir and storageDir with different values", """{ ... }: { services.niks3 = {""" + BASE_SERVER + """
        storeDir = "/srv/a"; storageDir = "/srv/b"; }; }""", r"services\.niks3\.storageDir.*conflicting definition")


SYSTEMD_VM = os.path.join(ROOT, "nixos/tests/systemd-vm")


def render_for_vm(config_file):
    """nixos/tests/systemd-vm/render.nix on a configuration: (exit code, parsed JSON or None, stderr)."""
    p = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode",
                        "--arg", "libPath", LIB, "--arg", "modulePath", MODULE,
                        "--arg", "configPath", config_file,
                        "--arg", "extraPkgsPath", os.path.join(SYSTEMD_VM, "vm-pkgs.nix"),
                        os.path.join(SYSTEMD_VM, "render.nix")], capture_output=True, text=True)
    try:
        data = json.loads(p.stdout) if p.returncode == 0 else None
    except json.JSONDecodeError:
        data = None
    return p.returncode, data, p.stderr


def systemd_vm_render():
    """The renderer of the systemd VM check (nixos/tests/systemd-vm/run.sh boots its output): the VM's
    configurations render with NixOS's rules, name no stand-in package, and what it cannot render is an
    error rather than something left out."""
    print("== systemd VM check: what render.nix makes of its configurations")
    for config in ("server", "builder"):
        rc, d, err = render_for_vm(os.path.join(SYSTEMD_VM, "configs", f"{config}.nix"))
        check(f"configs/{config}.nix renders with no failed assertion", rc == 0 and d and not d["failedAssertions"],
              err[-600:] or str(d and d["failedAssertions"]))
        if not d:
            continue
        files = {f["path"]: f["text"] for f in d["files"]}
        check(f"{config}: no file names a stand-in package", not any(STUB in t for t in files.values()),
              ", ".join(p for p, t in files.items() if STUB in t))
        unit = files.get("etc/systemd/system/niks3.service", "")
        for line in ["ExecStart=/opt/niks3/bin/niks3 serve --priority 30" + (" --no-spool" if config == "builder" else ""),
                     'Environment="PATH=/usr/bin:', 'Environment="NIX_REMOTE=daemon"', "SystemCallFilter=~@resources",
                     "RestrictAddressFamilies=AF_INET6", "[Install]\nWantedBy=multi-user.target"]:
            check(f"{config}: niks3.service has {line.splitlines()[-1]!r}", line in unit, unit[-400:])
        check(f"{config}: an empty LoadCredential list renders no line (attrsToSection)",
              "LoadCredential" not in unit, unit)
        check(f"{config}: multi-user.target wants niks3.service",
              {"path": "etc/systemd/system/multi-user.target.wants/niks3.service", "target": "../niks3.service"} in d["links"])
        hook = files.get("etc/nix/nix.conf", "")
        check(f"{config}: nix.conf's post-build-hook is a real store path (the wrapper's text)",
              len(d["storePaths"]) == 1 and f"post-build-hook = {d['storePaths'][0]}" in hook, hook)
        if config == "builder":
            drain = files.get("etc/systemd/system/niks3-drain.service", "")
            check("builder: niks3-drain.service hands over the push token",
                  "LoadCredential=api-token:/run/secrets/niks3/push-token" in drain, drain[-400:])
    with tempfile.TemporaryDirectory() as tmp:
        bad = os.path.join(tmp, "bad.nix")
        with open(bad, "w") as fh:
            fh.write(f'{{ ... }}: {{ imports = [ {SYSTEMD_VM}/configs/server.nix ]; systemd.services.niks3.script = "true"; }}\n')
        rc, d, err = render_for_vm(bad)
        check("a unit option render.nix does not implement (script) is an error naming it",
              rc != 0 and "niks3.service sets script" in err, err[-400:])


def main():
    for f in [TOOL, MODULE, EXTRA]:
        if not os.path.exists(f):
            print(f"missing {f}")
            sys.exit(2)
    server_s3()
    embedded()
    builder_remote()
    variants()
    rejected()
    settings_rendered()
    renamed_option()
    options_documented()
    flake()
    vm_checks()
    systemd_vm_render()
    single_host_end_to_end()
    s3_end_to_end()
    print(f"{passed} passed, {failed} failed" + (f" ({skipped} skipped)" if skipped else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
