package manifests

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/gradeline/gradeline/bus"
)

// natsReplicas is the size of the NATS cluster and the replica count of
// every stream in Kubernetes.
const natsReplicas = 3

// kubeOptions tune checkKubernetes.
type kubeOptions struct {
	// PinnedImages requires every image to carry a tag other than latest
	// (or a digest). Overlays set the release tag; the base does not.
	PinnedImages bool
}

// workload is a Deployment or StatefulSet, seen through its pod template.
type workload struct {
	obj      object
	replicas *int32
	pod      *corev1.PodTemplateSpec
}

type kubeIndex struct {
	objs      []object
	workloads []workload
	fail      func(format string, a ...any)
}

func (x *kubeIndex) find(kind, ns, name string) (object, bool) {
	for _, o := range x.objs {
		if o.Kind == kind && o.Namespace == ns && o.Name == name {
			return o, true
		}
	}
	return object{}, false
}

func (x *kubeIndex) all(kind string) []object {
	var out []object
	for _, o := range x.objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

func (x *kubeIndex) workload(kind, ns, name string) *workload {
	for i, w := range x.workloads {
		if w.obj.Kind == kind && w.obj.Namespace == ns && w.obj.Name == name {
			return &x.workloads[i]
		}
	}
	return nil
}

// checkKubernetes checks rendered objects beyond their schema: no secret in
// the manifests, probes, resources and a locked-down security context on
// every container, the configuration each service needs, a 3-node NATS
// cluster, and that every reference (Service selectors and ports, Ingress
// backends, autoscaler targets, ConfigMaps, the KEDA monitoring endpoint)
// points at something that exists.
func checkKubernetes(objs []object, opt kubeOptions) error {
	var errs []error
	x := &kubeIndex{objs: objs, fail: func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }}
	for _, o := range objs {
		switch v := o.Value.(type) {
		case *appsv1.Deployment:
			x.workloads = append(x.workloads, workload{o, v.Spec.Replicas, &v.Spec.Template})
		case *appsv1.StatefulSet:
			x.workloads = append(x.workloads, workload{o, v.Spec.Replicas, &v.Spec.Template})
		case *corev1.Secret:
			x.fail("%s: secrets are never in the manifests; create %s outside the repository", o, o.Name)
		case *corev1.ConfigMap:
			for k := range v.Data {
				if isSecretEnv(k) {
					x.fail("%s holds %s: that belongs in a Secret", o, k)
				}
			}
		}
	}
	for _, w := range x.workloads {
		x.checkWorkload(w, opt)
	}
	for _, svc := range services {
		x.checkService(svc)
	}
	x.checkJob(setupJob, opt)
	x.checkNATS()
	x.checkNetworkPolicies()
	x.checkServices()
	x.checkIngresses()
	x.checkAutoscalers()
	return errors.Join(errs...)
}

func isSecretEnv(name string) bool {
	for _, s := range services {
		if slices.Contains(s.SecretEnv, name) {
			return true
		}
	}
	return false
}

func (x *kubeIndex) checkWorkload(w workload, opt kubeOptions) {
	o, spec := w.obj, &w.pod.Spec
	if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		x.fail("%s: pod securityContext.runAsNonRoot is not true", o)
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		x.checkContainer(o, c, opt, true)
	}
	x.checkVolumes(o, spec)
	// A PodDisruptionBudget keeps drains from taking every replica at once.
	var covered bool
	for _, p := range x.all("PodDisruptionBudget") {
		pdb := p.Value.(*policyv1.PodDisruptionBudget)
		if p.Namespace == o.Namespace && selects(pdb.Spec.Selector.MatchLabels, w.pod.Labels) {
			covered = true
		}
	}
	if !covered {
		x.fail("%s: no PodDisruptionBudget selects its pods", o)
	}
	if sel := workloadSelector(w); !selects(sel, w.pod.Labels) {
		x.fail("%s: selector %v does not match its pod labels %v", o, sel, w.pod.Labels)
	}
}

// checkVolumes: ConfigMaps that exist; of Secrets, only the NATS
// certificate's ca.crt (all of it for NATS itself).
func (x *kubeIndex) checkVolumes(o object, spec *corev1.PodSpec) {
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil {
			if _, ok := x.find("ConfigMap", o.Namespace, v.ConfigMap.Name); !ok {
				x.fail("%s: volume %s names ConfigMap %q, which is not in the manifests", o, v.Name, v.ConfigMap.Name)
			}
		}
		if v.Secret != nil {
			switch {
			case v.Secret.SecretName != natsTLSSecret:
				x.fail("%s: volume %s mounts Secret %q; only the secret env of the service table and %s are expected", o, v.Name, v.Secret.SecretName, natsTLSSecret)
			case o.Name != "nats" && (len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != "ca.crt"):
				x.fail("%s: volume %s mounts more of %s than ca.crt: the private key belongs to NATS alone", o, v.Name, natsTLSSecret)
			}
		}
	}
}

// checkJob: the Job of j runs the image of its target with its arguments
// as its NATS user over TLS, locked down like a service's pods (without
// probes: it runs once), retried while the NATS cluster forms, and removed
// a while after it finished, so the next release's apply creates and runs
// it again (a Job's template cannot be changed in place).
func (x *kubeIndex) checkJob(j job, opt kubeOptions) {
	i := slices.IndexFunc(x.all("Job"), func(o object) bool { return o.Name == j.Kube })
	if i < 0 {
		x.fail("no Job %q: nothing runs `gradeline %s` before the services start", j.Kube, strings.Join(j.Args, " "))
		return
	}
	o := x.all("Job")[i]
	jb := o.Value.(*batchv1.Job)
	spec := &jb.Spec.Template.Spec
	if p := spec.RestartPolicy; p != corev1.RestartPolicyOnFailure && p != corev1.RestartPolicyNever {
		x.fail("%s: restartPolicy %q, want OnFailure or Never", o, p)
	}
	if jb.Spec.BackoffLimit == nil || *jb.Spec.BackoffLimit < 1 {
		x.fail("%s: backoffLimit %v: the Job must retry while the NATS cluster forms", o, deref(jb.Spec.BackoffLimit))
	}
	if jb.Spec.TTLSecondsAfterFinished == nil {
		x.fail("%s: no ttlSecondsAfterFinished: the finished Job would stay and the next release's apply could not run it again", o)
	}
	if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		x.fail("%s: pod securityContext.runAsNonRoot is not true", o)
	}
	x.checkVolumes(o, spec)
	k := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == j.Target })
	if k < 0 {
		x.fail("%s: no container %q", o, j.Target)
		return
	}
	c := spec.Containers[k]
	x.checkContainer(o, c, opt, false)
	repo, _, _ := strings.Cut(c.Image, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	if path.Base(repo) != j.Target {
		x.fail("%s: image %q, want the image of the Dockerfile target %q", o, c.Image, j.Target)
	}
	if len(c.Command) > 0 || !slices.Equal(c.Args, j.Args) {
		x.fail("%s: command %q args %q, want the image's entrypoint with args %q", o, c.Command, c.Args, j.Args)
	}
	ns := o.Namespace
	for _, name := range j.Env {
		if !x.lookupEnv(ns, c, name).found {
			x.fail("%s: required environment %s is not set", o, name)
		}
	}
	if v := x.lookupEnv(ns, c, bus.EnvReplicas).value; v != strconv.Itoa(natsReplicas) {
		x.fail("%s: %s=%q, want %d: streams replicated on every NATS node", o, bus.EnvReplicas, v, natsReplicas)
	}
	if v := x.lookupEnv(ns, c, "NATS_URL").value; v != "" {
		u, err := url.Parse(strings.Split(v, ",")[0])
		if err != nil || u.Hostname() == "" {
			x.fail("%s: NATS_URL %q is not a URL", o, v)
		} else {
			x.checkNATSURL(o, ns, c, j.User, u)
		}
	}
}

// jobPods returns the pod labels of the Job of j (nil when there is none).
func (x *kubeIndex) jobPods(j job) labels.Set {
	for _, o := range x.all("Job") {
		if o.Name == j.Kube {
			return o.Value.(*batchv1.Job).Spec.Template.Labels
		}
	}
	return nil
}

func workloadSelector(w workload) map[string]string {
	switch v := w.obj.Value.(type) {
	case *appsv1.Deployment:
		if v.Spec.Selector != nil {
			return v.Spec.Selector.MatchLabels
		}
	case *appsv1.StatefulSet:
		if v.Spec.Selector != nil {
			return v.Spec.Selector.MatchLabels
		}
	}
	return nil
}

// selects reports whether a non-empty selector matches the labels.
func selects(selector, podLabels map[string]string) bool {
	return len(selector) > 0 && labels.SelectorFromSet(selector).Matches(labels.Set(podLabels))
}

// checkContainer checks one container; probes says whether it must have
// readiness and liveness probes (a long-running one), not a Job's.
func (x *kubeIndex) checkContainer(o object, c corev1.Container, opt kubeOptions, probes bool) {
	where := fmt.Sprintf("%s container %s", o, c.Name)
	if probes && c.ReadinessProbe == nil {
		x.fail("%s: no readinessProbe", where)
	}
	if probes && c.LivenessProbe == nil {
		x.fail("%s: no livenessProbe", where)
	}
	for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if p != nil && p.HTTPGet != nil && !hasPort(c, p.HTTPGet.Port) {
			x.fail("%s: probe port %s is not a port of the container", where, p.HTTPGet.Port.String())
		}
	}
	r := c.Resources
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := r.Requests[name]; !ok || q.IsZero() {
			x.fail("%s: no resources.requests.%s", where, name)
		}
	}
	if q, ok := r.Limits[corev1.ResourceMemory]; !ok || q.IsZero() {
		x.fail("%s: no resources.limits.memory", where)
	} else if req, ok := r.Requests[corev1.ResourceMemory]; ok && req.Cmp(q) > 0 {
		x.fail("%s: memory request %s above the limit %s", where, req.String(), q.String())
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		x.fail("%s: no securityContext", where)
	default:
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			x.fail("%s: securityContext.allowPrivilegeEscalation is not false", where)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			x.fail("%s: securityContext.readOnlyRootFilesystem is not true", where)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			x.fail("%s: securityContext.capabilities.drop lacks ALL", where)
		}
		if sc.Privileged != nil && *sc.Privileged {
			x.fail("%s: privileged", where)
		}
	}
	if opt.PinnedImages && !isPinnedTag(c.Image) {
		x.fail("%s: image %q has no release tag or digest", where, c.Image)
	}
	for _, e := range c.EnvFrom {
		if e.ConfigMapRef != nil {
			if _, ok := x.find("ConfigMap", o.Namespace, e.ConfigMapRef.Name); !ok {
				x.fail("%s: envFrom names ConfigMap %q, which is not in the manifests", where, e.ConfigMapRef.Name)
			}
		}
		if e.SecretRef != nil {
			x.fail("%s: envFrom a whole Secret (%s): name each key with secretKeyRef", where, e.SecretRef.Name)
		}
	}
	for _, e := range c.Env {
		if isSecretEnv(e.Name) && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			x.fail("%s: %s must come from a Secret (secretKeyRef), not a literal", where, e.Name)
		}
	}
}

func isPinnedTag(image string) bool {
	if strings.Contains(image, "@sha256:") {
		return true
	}
	i := strings.LastIndex(image, ":")
	return i > strings.LastIndex(image, "/") && image[i+1:] != "latest" && image[i+1:] != ""
}

func hasPort(c corev1.Container, p intstr.IntOrString) bool {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return true
		}
	}
	return false
}

// envSource is how a container gets one variable.
type envSource struct {
	value  string // the literal or the ConfigMap value
	secret bool   // from a secretKeyRef
	found  bool
}

// lookupEnv resolves a variable of a container: env first (it wins), then
// the ConfigMaps of envFrom.
func (x *kubeIndex) lookupEnv(ns string, c corev1.Container, name string) envSource {
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if e.ValueFrom != nil {
			return envSource{secret: e.ValueFrom.SecretKeyRef != nil, found: true}
		}
		return envSource{value: e.Value, found: e.Value != ""}
	}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		if cm, ok := x.find("ConfigMap", ns, ef.ConfigMapRef.Name); ok {
			if v, ok := cm.Value.(*corev1.ConfigMap).Data[ef.Prefix+name]; ok && v != "" {
				return envSource{value: v, found: true}
			}
		}
	}
	return envSource{}
}

func (x *kubeIndex) checkService(svc service) {
	var w *workload
	for i := range x.workloads {
		if x.workloads[i].obj.Kind == "Deployment" && x.workloads[i].obj.Name == svc.Name {
			w = &x.workloads[i]
		}
	}
	if w == nil {
		x.fail("no Deployment %q", svc.Name)
		return
	}
	i := slices.IndexFunc(w.pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == svc.Name })
	if i < 0 {
		x.fail("%s: no container %q", w.obj, svc.Name)
		return
	}
	c, ns := w.pod.Spec.Containers[i], w.obj.Namespace
	for _, name := range svc.Env {
		src := x.lookupEnv(ns, c, name)
		switch {
		case !src.found:
			x.fail("%s: required environment %s is not set", w.obj, name)
		case slices.Contains(svc.SecretEnv, name) && !src.secret:
			x.fail("%s: %s must come from a Secret (secretKeyRef)", w.obj, name)
		}
	}
	if v := x.lookupEnv(ns, c, bus.EnvReplicas).value; v != strconv.Itoa(natsReplicas) {
		x.fail("%s: %s=%q, want %d: streams replicated on every NATS node", w.obj, bus.EnvReplicas, v, natsReplicas)
	}
	if v := x.lookupEnv(ns, c, "NATS_URL").value; v != "" {
		u, err := url.Parse(strings.Split(v, ",")[0])
		if err != nil || u.Hostname() == "" {
			x.fail("%s: NATS_URL %q is not a URL", w.obj, v)
		} else if _, ok := x.find("Service", ns, strings.Split(u.Hostname(), ".")[0]); !ok {
			x.fail("%s: NATS_URL %q names no Service of the manifests", w.obj, v)
		} else {
			x.checkNATSURL(w.obj, ns, c, svc.Name, u)
		}
	}
	port := intstr.FromInt32(int32(svc.Port))
	var named bool
	for _, p := range c.Ports {
		if p.ContainerPort == int32(svc.Port) {
			port, named = intstr.FromString(p.Name), p.Name != ""
		}
	}
	if !named {
		x.fail("%s: no named container port %d", w.obj, svc.Port)
	}
	for _, pr := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
		if pr.probe == nil {
			continue
		}
		if g := pr.probe.HTTPGet; g == nil || g.Path != pr.path || g.Port != port {
			x.fail("%s: probe %+v, want GET %s on port %s", w.obj, pr.probe.ProbeHandler, pr.path, port.String())
		}
	}
}

func (x *kubeIndex) checkNATS() {
	sets := x.all("StatefulSet")
	i := slices.IndexFunc(sets, func(o object) bool { return o.Name == "nats" })
	if i < 0 {
		x.fail("no StatefulSet nats")
		return
	}
	o := sets[i]
	ss := o.Value.(*appsv1.StatefulSet)
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != natsReplicas {
		x.fail("%s: replicas %v, want %d (JetStream quorum survives one lost node)", o, deref(ss.Spec.Replicas), natsReplicas)
	}
	if len(ss.Spec.VolumeClaimTemplates) == 0 {
		x.fail("%s: no volumeClaimTemplates: JetStream data would not survive a restart", o)
	}
	h, ok := x.find("Service", o.Namespace, ss.Spec.ServiceName)
	if !ok {
		x.fail("%s: serviceName %q names no Service", o, ss.Spec.ServiceName)
	} else if s := h.Value.(*corev1.Service); s.Spec.ClusterIP != corev1.ClusterIPNone || !s.Spec.PublishNotReadyAddresses {
		x.fail("%s: must be headless (clusterIP None) and publishNotReadyAddresses, so the routes resolve before the cluster forms", h)
	}
	var conf string
	for _, v := range ss.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil {
			if cm, ok := x.find("ConfigMap", o.Namespace, v.ConfigMap.Name); ok {
				conf += strings.Join(mapValues(cm.Value.(*corev1.ConfigMap).Data), "\n")
			}
		}
	}
	x.checkNATSAuth(o, x.natsServerConfig(o, ss))
	if !regexp.MustCompile(`(?m)^\s*jetstream\s*[{:]`).MatchString(conf) {
		x.fail("%s: the NATS configuration does not enable jetstream", o)
	}
	for n := range natsReplicas {
		route := fmt.Sprintf("nats://%s-%d.%s:6222", o.Name, n, ss.Spec.ServiceName)
		if !strings.Contains(conf, route) {
			x.fail("%s: the NATS configuration has no route %s", o, route)
		}
	}
	for _, p := range x.all("PodDisruptionBudget") {
		pdb := p.Value.(*policyv1.PodDisruptionBudget)
		if p.Namespace != o.Namespace || !selects(pdb.Spec.Selector.MatchLabels, ss.Spec.Template.Labels) {
			continue
		}
		quorum := natsReplicas/2 + 1
		if m := pdb.Spec.MinAvailable; m != nil && m.Type == intstr.Int && int(m.IntVal) < quorum {
			x.fail("%s: minAvailable %d is below the JetStream quorum %d", p, m.IntVal, quorum)
		}
		if m := pdb.Spec.MaxUnavailable; m != nil && m.Type == intstr.Int && int(m.IntVal) > natsReplicas-quorum {
			x.fail("%s: maxUnavailable %d would break the JetStream quorum", p, m.IntVal)
		}
		if pdb.Spec.MinAvailable == nil && pdb.Spec.MaxUnavailable == nil {
			x.fail("%s: sets neither minAvailable nor maxUnavailable", p)
		}
	}
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

func deref(p *int32) any {
	if p == nil {
		return "unset"
	}
	return *p
}

// selected returns the workloads a Service selects.
func (x *kubeIndex) selected(ns string, selector map[string]string) []workload {
	var out []workload
	for _, w := range x.workloads {
		if w.obj.Namespace == ns && selects(selector, w.pod.Labels) {
			out = append(out, w)
		}
	}
	return out
}

func (x *kubeIndex) checkServices() {
	for _, o := range x.all("Service") {
		s := o.Value.(*corev1.Service)
		ws := x.selected(o.Namespace, s.Spec.Selector)
		if len(ws) == 0 {
			x.fail("%s: selector %v selects no pods of the manifests", o, s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			for _, w := range ws {
				if !slices.ContainsFunc(w.pod.Spec.Containers, func(c corev1.Container) bool { return hasPort(c, target) }) {
					x.fail("%s: port %s targets %s, which %s does not expose", o, p.Name, target.String(), w.obj)
				}
			}
		}
	}
}

func (x *kubeIndex) checkIngresses() {
	var edge bool
	for _, o := range x.all("Ingress") {
		ing := o.Value.(*networkingv1.Ingress)
		for _, rule := range ing.Spec.Rules {
			if rule.HTTP == nil {
				continue
			}
			for _, path := range rule.HTTP.Paths {
				b := path.Backend.Service
				if b == nil {
					x.fail("%s: path %s has no service backend", o, path.Path)
					continue
				}
				so, ok := x.find("Service", o.Namespace, b.Name)
				if !ok {
					x.fail("%s: backend Service %q is not in the manifests", o, b.Name)
					continue
				}
				if b.Name != edgeName {
					x.fail("%s: exposes Service %q; only the edge %s is reachable from outside", o, b.Name, edgeName)
				}
				edge = true
				s := so.Value.(*corev1.Service)
				if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool {
					return (b.Port.Name != "" && p.Name == b.Port.Name) || (b.Port.Number != 0 && p.Port == b.Port.Number)
				}) {
					x.fail("%s: backend port %+v is not a port of Service %s", o, b.Port, b.Name)
				}
			}
		}
	}
	if !edge {
		x.fail("no Ingress routes to the edge %s", edgeName)
	}
}

func (x *kubeIndex) checkAutoscalers() {
	scaled := map[string]string{} // namespace/deployment -> scaler
	target := func(o object, kind, name string) {
		w := x.workload(kind, o.Namespace, name)
		if kind != "Deployment" || w == nil {
			x.fail("%s: scale target %s %q is not a Deployment of the manifests", o, kind, name)
			return
		}
		key := o.Namespace + "/" + name
		if prev, ok := scaled[key]; ok {
			x.fail("%s and %s both scale Deployment %s", prev, o, name)
		}
		scaled[key] = o.String()
		if w.replicas != nil {
			x.fail("%s: sets replicas while %s owns the count: every apply would reset it", w.obj, o)
		}
	}
	for _, o := range x.all("HorizontalPodAutoscaler") {
		h := o.Value.(*autoscalingv2.HorizontalPodAutoscaler)
		target(o, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
			x.fail("%s: minReplicas %v, want at least 2", o, deref(h.Spec.MinReplicas))
		}
	}
	lag := map[string]bool{}
	for _, o := range x.all("ScaledObject") {
		so := o.Value.(*scaledObject)
		ref := so.Spec.ScaleTargetRef
		if ref == nil {
			x.fail("%s: no scaleTargetRef", o)
			continue
		}
		kind := ref.Kind
		if kind == "" {
			kind = "Deployment"
		}
		target(o, kind, ref.Name)
		if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount < 2 {
			x.fail("%s: minReplicaCount %v, want at least 2 (the PodDisruptionBudget allows one down)", o, deref(so.Spec.MinReplicaCount))
		}
		if so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount < *cmpOr(so.Spec.MinReplicaCount, 0) {
			x.fail("%s: maxReplicaCount %v below minReplicaCount", o, deref(so.Spec.MaxReplicaCount))
		}
		for _, tr := range so.Spec.Triggers {
			// KEDA's admission webhook refuses a fallback otherwise.
			if so.Spec.Fallback != nil && tr.MetricType != autoscalingv2.AverageValueMetricType {
				x.fail("%s: fallback needs metricType AverageValue on every trigger, %s has %q", o, tr.Type, tr.MetricType)
			}
			if tr.Type != "nats-jetstream" {
				continue
			}
			x.checkNATSTrigger(o, tr)
			want, ok := lagScaled[ref.Name]
			if ok && tr.Metadata["stream"] == want.Stream && tr.Metadata["consumer"] == want.Durable {
				lag[ref.Name] = true
			}
		}
	}
	for name, want := range lagScaled {
		if !lag[name] {
			x.fail("no ScaledObject scales %s on the lag of %s/%s (trigger nats-jetstream)", name, want.Stream, want.Durable)
		}
	}
	for _, w := range x.workloads {
		if _, ok := scaled[w.obj.Namespace+"/"+w.obj.Name]; !ok && w.obj.Kind == "Deployment" && (w.replicas == nil || *w.replicas < 2) {
			x.fail("%s: neither autoscaled nor at 2 or more replicas", w.obj)
		}
	}
	if _, ok := scaled[x.edgeNamespace()+"/"+edgeName]; !ok {
		x.fail("the edge %s has no HorizontalPodAutoscaler", edgeName)
	}
}

func cmpOr(p *int32, def int32) *int32 {
	if p == nil {
		return &def
	}
	return p
}

func (x *kubeIndex) edgeNamespace() string {
	for _, w := range x.workloads {
		if w.obj.Name == edgeName {
			return w.obj.Namespace
		}
	}
	return ""
}

// checkNATSTrigger checks a nats-jetstream trigger. KEDA runs in its own
// namespace and, with a clustered JetStream, asks the stream leader at
// <server name>.<endpoint>: the endpoint must be the headless Service of
// the NATS StatefulSet, fully qualified with the namespace it runs in.
func (x *kubeIndex) checkNATSTrigger(o object, tr scaleTrigger) {
	for k := range tr.Metadata {
		if !natsJetStreamMetadata[k] {
			x.fail("%s: nats-jetstream trigger has unknown metadata %q", o, k)
		}
	}
	for _, k := range []string{"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"} {
		if tr.Metadata[k] == "" {
			x.fail("%s: nats-jetstream trigger lacks %s", o, k)
		}
	}
	if v := tr.Metadata["lagThreshold"]; v != "" {
		if n, err := strconv.Atoi(v); err != nil || n <= 0 {
			x.fail("%s: lagThreshold %q is not a positive integer", o, v)
		}
	}
	ep := tr.Metadata["natsServerMonitoringEndpoint"]
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		x.fail("%s: natsServerMonitoringEndpoint %q: %v", o, ep, err)
		return
	}
	svc, rest, _ := strings.Cut(host, ".")
	if rest != o.Namespace+".svc.cluster.local" {
		x.fail("%s: natsServerMonitoringEndpoint %q, want %s.%s.svc.cluster.local:%s (KEDA resolves it from its own namespace)", o, ep, svc, o.Namespace, port)
	}
	s, ok := x.find("Service", o.Namespace, svc)
	if !ok {
		x.fail("%s: natsServerMonitoringEndpoint %q names no Service", o, ep)
		return
	}
	if s.Value.(*corev1.Service).Spec.ClusterIP != corev1.ClusterIPNone {
		x.fail("%s: natsServerMonitoringEndpoint %q is not the headless Service: KEDA cannot reach the stream leader by name", o, ep)
	}
	if !slices.ContainsFunc(s.Value.(*corev1.Service).Spec.Ports, func(p corev1.ServicePort) bool { return strconv.Itoa(int(p.Port)) == port }) {
		x.fail("%s: natsServerMonitoringEndpoint port %s is not a port of Service %s", o, port, svc)
	}
}

// natsTLSSecret holds the NATS server's certificate (cert-manager's
// Certificate nats-tls): NATS mounts it whole, the services only its ca.crt.
const natsTLSSecret = "nats-tls"

// secretRef matches a password given as a reference to another variable
// of the container, $(NAME), which Kubernetes expands.
var secretRef = regexp.MustCompile(`^\$\(([A-Za-z_][A-Za-z0-9_]*)\)$`)

// checkNATSURL: a service connects over TLS, as its own user, with a
// password from a Secret, verifying the server with a CA file.
func (x *kubeIndex) checkNATSURL(o object, ns string, c corev1.Container, user string, u *url.URL) {
	if u.Scheme != "tls" {
		x.fail("%s: NATS_URL scheme %q, want tls: traffic to NATS is encrypted", o, u.Scheme)
	}
	if u.User == nil || u.User.Username() != user {
		x.fail("%s: NATS_URL connects as %v, want its own user %q (no anonymous NATS)", o, u.User, user)
		return
	}
	pw, _ := u.User.Password()
	m := secretRef.FindStringSubmatch(pw)
	if m == nil {
		x.fail("%s: NATS_URL password is not a $(VAR) reference to a Secret", o)
	} else if src := x.lookupEnv(ns, c, m[1]); !src.secret {
		x.fail("%s: NATS_URL password $(%s) does not come from a Secret (secretKeyRef)", o, m[1])
	}
	if x.lookupEnv(ns, c, bus.EnvNATSCA).value == "" {
		x.fail("%s: %s is not set: the server's certificate would go unverified", o, bus.EnvNATSCA)
	}
}

// checkNATSAuth: the server configuration (with its included files, all
// ConfigMaps of the StatefulSet) admits exactly the users of the bus, with
// passwords from the environment, and serves TLS.
func (x *kubeIndex) checkNATSAuth(o object, conf string) {
	if !regexp.MustCompile(`(?m)^\s*authorization\s*[{:]`).MatchString(conf) {
		x.fail("%s: the NATS configuration has no authorization block: anonymous clients would be admitted", o)
		return
	}
	if regexp.MustCompile(`(?m)^\s*no_auth_user\s*:`).MatchString(conf) {
		x.fail("%s: the NATS configuration sets no_auth_user: anonymous clients would be admitted", o)
	}
	if !regexp.MustCompile(`(?m)^\s*tls\s*[{:]`).MatchString(conf) {
		x.fail("%s: the NATS configuration has no tls block", o)
	}
	ss := o.Value.(*appsv1.StatefulSet)
	i := slices.IndexFunc(ss.Spec.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == "nats" })
	if i < 0 {
		x.fail("%s: no container nats", o)
		return
	}
	c := ss.Spec.Template.Spec.Containers[i]
	for _, user := range bus.Users() {
		if !strings.Contains(conf, fmt.Sprintf("user: %q", user)) {
			x.fail("%s: the NATS configuration has no user %q", o, user)
		}
	}
	for _, m := range regexp.MustCompile(`password:\s*\$([A-Z0-9_]+)`).FindAllStringSubmatch(conf, -1) {
		if !x.lookupEnv(o.Namespace, c, m[1]).secret {
			x.fail("%s: the NATS configuration reads $%s, which no secretKeyRef of the nats container sets", o, m[1])
		}
	}
}

func serviceNames() []string {
	var out []string
	for _, s := range services {
		out = append(out, s.Name)
	}
	return out
}

// checkNetworkPolicies: NATS admits clients on 4222 from the services
// only; egress from the namespace is denied by default, and the database
// ports are open only to the services whose environment names that database.
func (x *kubeIndex) checkNetworkPolicies() {
	nats := x.workload("StatefulSet", x.edgeNamespace(), "nats")
	if nats == nil {
		return
	}
	podsOf := map[string]labels.Set{}
	for _, s := range services {
		if w := x.workload("Deployment", nats.obj.Namespace, s.Name); w != nil {
			podsOf[s.Name] = w.pod.Labels
		}
	}
	setupPods := x.jobPods(setupJob)
	if setupPods != nil {
		podsOf[setupJob.Kube] = setupPods
	}
	stranger := labels.Set{"app.kubernetes.io/name": "stranger"}
	var guarded, defaultEgress, setupAdmitted bool
	dbPorts := map[int32]string{27017: "MONGO_URI", 9000: "CLICKHOUSE_DSN", 9440: "CLICKHOUSE_DSN", 8123: "CLICKHOUSE_DSN", 8443: "CLICKHOUSE_DSN"}
	for _, p := range x.all("NetworkPolicy") {
		np := p.Value.(*networkingv1.NetworkPolicy)
		if p.Namespace != nats.obj.Namespace {
			continue
		}
		sel, err := metav1LabelSelector(np.Spec.PodSelector)
		if err != nil {
			x.fail("%s: podSelector: %v", p, err)
			continue
		}
		types := np.Spec.PolicyTypes
		if sel.Empty() && slices.Contains(types, networkingv1.PolicyTypeEgress) {
			defaultEgress = true
		}
		if sel.Matches(labels.Set(nats.pod.Labels)) && slices.Contains(types, networkingv1.PolicyTypeIngress) {
			guarded = true
			for _, r := range np.Spec.Ingress {
				if !rulePorts(r.Ports, 4222) {
					continue
				}
				for _, peer := range r.From {
					if peer.PodSelector == nil || peer.NamespaceSelector != nil || peer.IPBlock != nil {
						x.fail("%s: NATS client port open to %+v, want the services' pods only", p, peer)
						continue
					}
					ps, err := metav1LabelSelector(*peer.PodSelector)
					if err != nil || ps.Matches(stranger) || ps.Empty() {
						x.fail("%s: NATS client port open to pods beyond the services", p)
					}
					if err == nil && setupPods != nil && ps.Matches(setupPods) {
						setupAdmitted = true
					}
				}
				if len(r.From) == 0 {
					x.fail("%s: NATS client port open to everyone", p)
				}
			}
		}
		for _, r := range np.Spec.Egress {
			for _, port := range r.Ports {
				if port.Port == nil {
					continue
				}
				env, ok := dbPorts[port.Port.IntVal]
				if !ok {
					continue
				}
				for name, pl := range podsOf {
					svc, _ := serviceByName(name)
					if sel.Matches(pl) && !slices.Contains(svc.Env, env) {
						x.fail("%s: opens port %d to %s, which does not use %s", p, port.Port.IntVal, name, env)
					}
				}
				if sel.Matches(stranger) {
					x.fail("%s: opens port %d to pods beyond the services", p, port.Port.IntVal)
				}
			}
		}
	}
	if !guarded {
		x.fail("no NetworkPolicy guards the NATS pods: any pod could connect")
	} else if setupPods != nil && !setupAdmitted {
		x.fail("no NetworkPolicy admits the Job %s to NATS's client port: the streams would never be created", setupJob.Kube)
	}
	if !defaultEgress {
		x.fail("no NetworkPolicy limits the egress of every pod of namespace %s", nats.obj.Namespace)
	}
}

func rulePorts(ports []networkingv1.NetworkPolicyPort, want int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Port == nil || (p.Port.Type == intstr.Int && p.Port.IntVal == want) || (p.Port.Type == intstr.String && p.Port.StrVal == "client") {
			return true
		}
	}
	return false
}

func metav1LabelSelector(s metav1.LabelSelector) (labels.Selector, error) {
	return metav1.LabelSelectorAsSelector(&s)
}

// natsServerConfig returns the configuration file the nats container is
// started with (--config), with its include lines replaced by the files
// they name, as the server reads them from the mounted ConfigMaps.
func (x *kubeIndex) natsServerConfig(o object, ss *appsv1.StatefulSet) string {
	spec := ss.Spec.Template.Spec
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "nats" })
	if i < 0 {
		return ""
	}
	c := spec.Containers[i]
	files := map[string]string{}
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			if cm, ok := x.find("ConfigMap", o.Namespace, v.ConfigMap.Name); ok {
				for k, d := range cm.Value.(*corev1.ConfigMap).Data {
					files[path.Join(m.MountPath, k)] = d
				}
			}
		}
	}
	main := ""
	for j, a := range c.Args {
		if (a == "--config" || a == "-c") && j+1 < len(c.Args) {
			main = c.Args[j+1]
		}
	}
	include := regexp.MustCompile(`(?m)^\s*include\s+"?([^"\s]+)"?\s*;?\s*$`)
	var resolve func(file string, depth int) string
	resolve = func(file string, depth int) string {
		text, ok := files[file]
		if !ok || depth > 5 {
			x.fail("%s: the NATS configuration %s is not in a mounted ConfigMap", o, file)
			return ""
		}
		return include.ReplaceAllStringFunc(text, func(line string) string {
			inc := include.FindStringSubmatch(line)[1]
			return resolve(path.Join(path.Dir(file), inc), depth+1)
		})
	}
	if main == "" {
		x.fail("%s: the nats container is not started with --config", o)
		return ""
	}
	return resolve(main, 0)
}
