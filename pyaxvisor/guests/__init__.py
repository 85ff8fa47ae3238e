"""Guest images bundled with pyaxvisor (sources and build.sh beside them)."""
