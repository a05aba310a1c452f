// Package deploy holds what runs wxlogin outside a developer's machine:
// the container image (Dockerfile), the Compose stack (compose.yaml), the
// Kubernetes manifests (k8s/) and the NATS server configuration with its
// least-privilege accounts and TLS (nats/). README.md is the operator's
// guide.
//
// The package has no code of its own. Its tests are the checks CI can make
// without a Docker engine or a cluster: every YAML file parses, every
// environment variable the manifests set exists in internal/config, the
// image's build command builds exactly the binaries under cmd/, the
// manifests carry the recommended security settings and refuse their
// placeholder secrets, and a real nats-server running the shipped
// configuration (with TLS) grants each user what it needs and refuses it
// the rest.
package deploy
