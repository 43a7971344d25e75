{{/* The release's full name, cut to 63 characters. */}}
{{- define "ferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ferry.labels" -}}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ferry.serviceAccountName" -}}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* repository:tag, or repository:tag@digest when a digest is given (the digest decides). */}}
{{- define "ferry.image" -}}
{{- $image := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- with .Values.image.digest }}{{ $image = printf "%s@%s" $image . }}{{ end -}}
{{- $image -}}
{{- end -}}

{{- define "ferry.workerImage" -}}
{{- $repository := default .Values.image.repository .Values.worker.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.worker.image.tag -}}
{{- $image := printf "%s:%s" $repository $tag -}}
{{- $digest := .Values.worker.image.digest | default (and (not .Values.worker.image.repository) (not .Values.worker.image.tag) .Values.image.digest) -}}
{{- with $digest }}{{ $image = printf "%s@%s" $image . }}{{ end -}}
{{- $image -}}
{{- end -}}

{{/* The namespaces the operator watches, comma-separated ("" = the whole cluster): the list
operator.watchNamespaces and the older single operator.watchNamespace, each once. */}}
{{- define "ferry.watchNamespaces" -}}
{{- $namespaces := concat (.Values.operator.watchNamespaces | default list) (compact (list .Values.operator.watchNamespace)) -}}
{{- join "," (uniq $namespaces) -}}
{{- end -}}

{{/* What the operator may do with the objects of the namespaces it watches (a ClusterRole
cluster-wide, a Role in each watched namespace): every verb is one it uses. */}}
{{- define "ferry.operatorRules" -}}
# Its three kinds: read and watched; patched for finalizers (get/update for the finalizer
# subresource the API server checks with OwnerReferencesPermissionEnforcement).
- apiGroups: [ferry.dev]
  resources: [transports, connections, workerpools]
  verbs: [get, list, watch, patch, update]
# Their status, written by server-side apply.
- apiGroups: [ferry.dev]
  resources: [transports/status, connections/status, workerpools/status]
  verbs: [get, patch, update]
# Owner references with blockOwnerDeletion on the worker's objects.
- apiGroups: [ferry.dev]
  resources: [transports/finalizers, connections/finalizers, workerpools/finalizers]
  verbs: [update]
# The workers' StatefulSets: made and kept as the resource says (no delete: garbage collection
# through owner references removes them).
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, update]
# The workers' Services and Secrets (tokens), watched label-selected to the workers' own so
# reconciles read them from a cache; Secrets are made by the operator, never read elsewhere.
- apiGroups: [""]
  resources: [services, secrets]
  verbs: [get, list, watch, create, patch, update]
# Whether a worker pod is ready and where it is (its IP).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- if .Values.workerTls.enabled }}
# The CA bundle as the ConfigMap ferry-ca of each namespace with ferry resources, applied
# (server-side) once per namespace and bundle; never read, listed or watched.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
{{- end }}
{{- if .Values.networkPolicy.workers }}
# Each worker's NetworkPolicy (networkPolicy.workers), watched like the other worker objects.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update]
{{- end }}
{{- if eq .Values.operator.workerAccess "proxy" }}
# operator.workerAccess: proxy — the calls to a worker through the API server: GET (report),
# PUT (spec), DELETE (a resource gone).
- apiGroups: [""]
  resources: [pods/proxy]
  verbs: [get, update, delete]
{{- end }}
# A worker's volume claim when its resource goes with reclaimPolicy: Delete.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [delete]
# The Events it writes about its resources.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Why a worker pod cannot be created (the StatefulSet controller's FailedCreate events).
- apiGroups: [""]
  resources: [events]
  verbs: [list]
{{- end -}}
