# A build machine (or CI runner) that fills a remote cache: the hook queues every build, niks3-drain
# pushes the spool to the cache server with this builder's own push token (made on the server with
# `niks3 token create --name builder-1 --scope push`). No server, no database here.
{ ... }:
{
  services.niks3.hook = {
    enable = true;
    serverUrl = "https://cache.example.org";
    tokenFile = "/run/secrets/niks3/push-token";
  };
}
