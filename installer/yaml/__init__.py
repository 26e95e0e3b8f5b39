"""A YAML 1.1 subset reader (as k3s's go-yaml v2 reads config.yaml), standard library only."""
