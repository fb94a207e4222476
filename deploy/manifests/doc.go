// Package manifests holds the checks of the deployment files: the
// Dockerfile, docker-compose.yml and the kustomize overlays.
package manifests
