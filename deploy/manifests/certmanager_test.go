package manifests

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// certificate is cert-manager's cert-manager.io/v1 Certificate, the fields
// of its spec the manifests use or may use, as in
// github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1 (not
// imported for the same reason as KEDA's types). Strict decoding makes a
// misspelt field fail.
type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              certificateSpec `json:"spec"`
}

type certificateSpec struct {
	SecretName     string                 `json:"secretName"`
	CommonName     string                 `json:"commonName,omitempty"`
	DNSNames       []string               `json:"dnsNames,omitempty"`
	IPAddresses    []string               `json:"ipAddresses,omitempty"`
	Duration       *metav1.Duration       `json:"duration,omitempty"`
	RenewBefore    *metav1.Duration       `json:"renewBefore,omitempty"`
	Usages         []string               `json:"usages,omitempty"`
	IsCA           bool                   `json:"isCA,omitempty"`
	PrivateKey     *certificatePrivateKey `json:"privateKey,omitempty"`
	IssuerRef      issuerRef              `json:"issuerRef"`
	SecretTemplate *struct {
		Annotations map[string]string `json:"annotations,omitempty"`
		Labels      map[string]string `json:"labels,omitempty"`
	} `json:"secretTemplate,omitempty"`
}

type certificatePrivateKey struct {
	RotationPolicy string `json:"rotationPolicy,omitempty"`
	Encoding       string `json:"encoding,omitempty"`
	Algorithm      string `json:"algorithm,omitempty"`
	Size           int    `json:"size,omitempty"`
}

type issuerRef struct {
	Name  string `json:"name"`
	Kind  string `json:"kind,omitempty"`
	Group string `json:"group,omitempty"`
}
