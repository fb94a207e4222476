// Package manifests has no API: its tests check the deployment files
// against the code they deploy. docker-compose.yml (loaded with the Compose
// specification's own loader), deploy/docker/Dockerfile (BuildKit's
// parser) and every kustomization under deploy/k8s (rendered with
// kustomize's Go API and decoded strictly into the Kubernetes, KEDA and
// cert-manager types) are held to the service table in table_test.go, and
// stream, consumer and NATS user names come from the bus contract, not
// copies. cmd/healthprobe is the containers' health check binary.
//
//	go test ./deploy/manifests/...
package manifests
