# One machine, minutes to set up: it builds, its hook queues every build, its own niks3 server drains
# the spool into a local object directory, signs with a key generated on first start, and serves the
# cache on port 5751 of all interfaces. PostgreSQL is this machine's services.postgresql.
{ ... }:
{
  services.niks3 = {
    enable = true;
    httpAddr = ":5751";
    openFirewall = true;
    storageDir = "/srv/niks3-cache";
    generateSignKey = true;
    hook.enable = true;
  };
}
