"""The citizen agent: runs duties in a sandbox. Standard library only, so it runs in a bare container."""
