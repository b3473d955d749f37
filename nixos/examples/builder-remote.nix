# A build machine (or CI runner) that fills a remote cache: the hook queues every build, niks3-drain
# pushes the spool to the cache server with the API token. No server, no database here.
{ ... }:
{
  services.niks3.hook = {
    enable = true;
    serverUrl = "https://cache.example.org";
    tokenFile = "/run/secrets/niks3/api-token";
  };
}
