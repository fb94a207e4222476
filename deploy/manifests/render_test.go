package manifests

import (
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// object is one rendered Kubernetes object, decoded into its Go type.
type object struct {
	APIVersion, Kind, Namespace, Name string
	// Value is a pointer to the API type: *appsv1.Deployment, ...
	Value any
}

func (o object) String() string {
	return fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name)
}

// kinds maps apiVersion/kind to a new value of its Go type. An object of
// any other kind is refused: every object must be checked by a real schema.
var kinds = map[string]func() any{
	"v1/Namespace":                           func() any { return new(corev1.Namespace) },
	"v1/ConfigMap":                           func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                              func() any { return new(corev1.Secret) },
	"v1/Service":                             func() any { return new(corev1.Service) },
	"v1/ServiceAccount":                      func() any { return new(corev1.ServiceAccount) },
	"apps/v1/Deployment":                     func() any { return new(appsv1.Deployment) },
	"apps/v1/StatefulSet":                    func() any { return new(appsv1.StatefulSet) },
	"batch/v1/Job":                           func() any { return new(batchv1.Job) },
	"policy/v1/PodDisruptionBudget":          func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/Ingress":           func() any { return new(networkingv1.Ingress) },
	"networking.k8s.io/v1/NetworkPolicy":     func() any { return new(networkingv1.NetworkPolicy) },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"keda.sh/v1alpha1/ScaledObject":          func() any { return new(scaledObject) },
	"cert-manager.io/v1/Certificate":         func() any { return new(certificate) },
}

// renderKustomization builds the kustomization in dir with kustomize's Go API (what
// `kubectl kustomize` runs) and decodes every object strictly.
func renderKustomization(dir string) ([]object, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", dir, err)
	}
	var objs []object
	var errs []error
	for _, r := range m.Resources() {
		js, err := r.MarshalJSON()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", r.GetKind(), r.GetName(), err))
			continue
		}
		o, err := decodeObject(js)
		if err != nil {
			errs = append(errs, fmt.Errorf("kustomize %s: %w", dir, err))
			continue
		}
		objs = append(objs, o)
	}
	return objs, errors.Join(errs...)
}

// decodeObject decodes one object strictly into the Go type of its kind: an
// unknown or misspelt field, a field given twice or a value of the wrong
// type is an error (field names are matched case-sensitively, as the API
// server does).
func decodeObject(js []byte) (object, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &meta); err != nil {
		return object{}, err
	}
	o := object{APIVersion: meta.APIVersion, Kind: meta.Kind, Namespace: meta.Metadata.Namespace, Name: meta.Metadata.Name}
	newValue, ok := kinds[meta.APIVersion+"/"+meta.Kind]
	if !ok {
		return o, fmt.Errorf("%s: no Go type known for apiVersion %q kind %q", o, meta.APIVersion, meta.Kind)
	}
	o.Value = newValue()
	strict, err := sigsjson.UnmarshalStrict(js, o.Value, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return o, fmt.Errorf("%s: %w", o, err)
	}
	if len(strict) > 0 {
		return o, fmt.Errorf("%s: %w", o, errors.Join(strict...))
	}
	return o, nil
}
