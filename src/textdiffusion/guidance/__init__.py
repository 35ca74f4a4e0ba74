"""Steering a sampler toward a label: classifier-free guidance as a wrapper of the network's forward, and the
rules by which a noisy classifier steers each family of sampler, each rule under its equation."""
