{{/*
Names and labels, in one place, the way Bitnami's and Airflow's charts keep them.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "tenantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: fullnameOverride, the release name when it already names
the chart, or `<release>-<chart>`. Truncated so that `-<component>` suffixes stay within 63. */}}
{{- define "tenantry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* `<fullname>-<component>`; call with (dict "root" $ "component" "api"). */}}
{{- define "tenantry.componentName" -}}
{{- printf "%s-%s" (include "tenantry.fullname" .root) .component -}}
{{- end -}}

{{- define "tenantry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "api"). */}}
{{- define "tenantry.labels" -}}
helm.sh/chart: {{ include "tenantry.chart" .root }}
{{ include "tenantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tenantry
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: name, instance and component only. They are immutable on a Deployment,
so nothing that changes between releases (version, chart) may be in them. */}}
{{- define "tenantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantry.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* The image reference: repository:tag, or repository@digest when a digest is set. */}}
{{- define "tenantry.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secret and key of the database URL. */}}
{{- define "tenantry.databaseSecret" -}}
{{- if .Values.devServices.enabled -}}
{{- include "tenantry.componentName" (dict "root" . "component" "dev-credentials") -}}
{{- else -}}
{{- default (include "tenantry.componentName" (dict "root" . "component" "database")) .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "tenantry.databaseKey" -}}
{{- ternary "database-url" .Values.database.urlKey .Values.devServices.enabled -}}
{{- end -}}

{{- define "tenantry.redisSecret" -}}
{{- if .Values.devServices.enabled -}}
{{- include "tenantry.componentName" (dict "root" . "component" "dev-credentials") -}}
{{- else -}}
{{- default (include "tenantry.componentName" (dict "root" . "component" "redis")) .Values.redis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "tenantry.redisKey" -}}
{{- ternary "redis-url" .Values.redis.urlKey .Values.devServices.enabled -}}
{{- end -}}

{{/* Settings every component shares, as TENANTRY_* environment variables (see
tenantry/settings.py). Rendered into the shared ConfigMap, and inline into the migrations
hook, which runs before the ConfigMap exists. */}}
{{- define "tenantry.sharedSettings" -}}
TENANTRY_ENVIRONMENT: {{ .Values.environment | quote }}
TENANTRY_LOG_LEVEL: {{ .Values.logLevel | quote }}
TENANTRY_LOG_FORMAT: {{ .Values.logFormat | quote }}
TENANTRY_PLATFORM_NAMESPACE: {{ .Release.Namespace | quote }}
{{- end -}}

{{/* The end of a container's env list: the secret-backed URLs the component needs, then
the shared and the component's extra env. Empty when there is nothing to add. Call with
(dict "root" $ "values" .Values.api "database" true "redis" true "broker" true); the broker's
URL is added only when it is not Redis (`worker.broker.existingSecret`). */}}
{{- define "tenantry.envTail" -}}
{{- $env := list -}}
{{- if .database -}}
{{- $ref := dict "name" (include "tenantry.databaseSecret" .root) "key" (include "tenantry.databaseKey" .root) -}}
{{- $env = append $env (dict "name" "TENANTRY_DATABASE_URL" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- if .redis -}}
{{- $ref := dict "name" (include "tenantry.redisSecret" .root) "key" (include "tenantry.redisKey" .root) -}}
{{- $env = append $env (dict "name" "TENANTRY_REDIS_URL" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- $broker := .root.Values.worker.broker -}}
{{- if and .broker $broker.existingSecret -}}
{{- $ref := dict "name" $broker.existingSecret "key" $broker.urlKey -}}
{{- $env = append $env (dict "name" "TENANTRY_WORKER__BROKER_URL" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- $env = append $env (dict "name" "TENANTRY_WORKER__BROKER_CONSUMER_TIMEOUT_SECONDS" "value" ($broker.consumerTimeoutSeconds | toString)) -}}
{{- end -}}
{{- $env = concat $env .root.Values.defaults.extraEnv .values.extraEnv -}}
{{- with $env -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/* The value of a component key, or the shared default when the component leaves it
empty; call with (dict "root" $ "values" .Values.api "key" "resources"). */}}
{{- define "tenantry.fallback" -}}
{{- $own := index .values .key -}}
{{- if $own -}}
{{- toYaml $own -}}
{{- else -}}
{{- toYaml (index .root.Values.defaults .key) -}}
{{- end -}}
{{- end -}}

{{/* A component's map merged over the shared default map. */}}
{{- define "tenantry.merged" -}}
{{- $merged := mustMergeOverwrite (deepCopy (index .root.Values.defaults .key)) (deepCopy (index .values .key)) -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* Pod-level fields every component shares: image pull secrets, scheduling, the pod
security context. Call with (dict "root" $ "values" .Values.api). */}}
{{- define "tenantry.podCommon" -}}
securityContext:
  {{- include "tenantry.merged" (dict "root" .root "values" .values "key" "podSecurityContext") | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $priority := default .root.Values.defaults.priorityClassName .values.priorityClassName }}
{{- with $priority }}
priorityClassName: {{ . }}
{{- end }}
{{- with fromYaml (include "tenantry.fallback" (dict "root" .root "values" .values "key" "nodeSelector")) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with fromYaml (include "tenantry.fallback" (dict "root" .root "values" .values "key" "affinity")) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := .values.tolerations | default .root.Values.defaults.tolerations }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container-level fields every component shares. */}}
{{- define "tenantry.containerCommon" -}}
image: {{ include "tenantry.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
securityContext:
  {{- include "tenantry.merged" (dict "root" .root "values" .values "key" "containerSecurityContext") | nindent 2 }}
resources:
  {{- include "tenantry.fallback" (dict "root" .root "values" .values "key" "resources") | nindent 2 }}
{{- end -}}

{{/* Pod annotations: the config checksum (so a settings change rolls the pods), then the
shared and the component's own annotations. */}}
{{- define "tenantry.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- with (fromYaml (include "tenantry.merged" (dict "root" .root "values" .values "key" "podAnnotations"))) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod labels: the standard labels plus shared and component pod labels. */}}
{{- define "tenantry.podLabels" -}}
{{ include "tenantry.labels" (dict "root" .root "component" .component) }}
{{- with (fromYaml (include "tenantry.merged" (dict "root" .root "values" .values "key" "podLabels"))) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The writable /tmp every pod gets, since the root filesystem is read-only. */}}
{{- define "tenantry.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.defaults.tmpSizeLimit }}
{{- end -}}

{{- define "tenantry.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* The API processes' shared metrics folder (PROMETHEUS_MULTIPROC_DIR), with workers > 1. */}}
{{- define "tenantry.apiMetricsDir" -}}
/run/tenantry/metrics
{{- end -}}

{{/* Guards of values the schema cannot express, failing the render with a message. */}}
{{- define "tenantry.validate" -}}
{{- $api := .Values.api -}}
{{- if and (not (kindIs "invalid" $api.terminationGracePeriodSeconds)) (le (int $api.terminationGracePeriodSeconds) (add $api.preStopSleepSeconds $api.gracefulShutdownSeconds | int)) -}}
{{- fail (printf "api.terminationGracePeriodSeconds (%v) must exceed api.preStopSleepSeconds + api.gracefulShutdownSeconds (%v), or the kubelet kills requests still draining" $api.terminationGracePeriodSeconds (add $api.preStopSleepSeconds $api.gracefulShutdownSeconds)) -}}
{{- end -}}
{{- if eq (int $api.check.port) 8000 -}}
{{- fail "api.check.port (8000) is the API's own port; the gateway check needs a port of its own, which no public route reaches" -}}
{{- end -}}
{{- $policy := .Values.envoyGateway.securityPolicy -}}
{{- if and $policy.enabled (not $policy.targetRefs) -}}
{{- fail "envoyGateway.securityPolicy.enabled needs the HTTPRoutes to protect in envoyGateway.securityPolicy.targetRefs" -}}
{{- end -}}
{{- if eq (int $api.service.checkPort) (int $api.service.port) -}}
{{- fail (printf "api.service.checkPort (%v) must differ from api.service.port (%v)" $api.service.checkPort $api.service.port) -}}
{{- end -}}
{{- $worker := .Values.worker -}}
{{- if and (not (kindIs "invalid" $worker.terminationGracePeriodSeconds)) (le (int $worker.terminationGracePeriodSeconds) (int $worker.softShutdownSeconds)) -}}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must exceed worker.softShutdownSeconds (%v), or the kubelet kills tasks before the warm shutdown ends" $worker.terminationGracePeriodSeconds $worker.softShutdownSeconds) -}}
{{- end -}}
{{- range $component := list "api" "worker" -}}
{{- $scaling := (index $.Values $component).autoscaling -}}
{{- if gt (int $scaling.minReplicas) (int $scaling.maxReplicas) -}}
{{- fail (printf "%s.autoscaling.minReplicas (%v) cannot exceed %s.autoscaling.maxReplicas (%v)" $component $scaling.minReplicas $component $scaling.maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tenantry.apiTerminationGracePeriodSeconds" -}}
{{- $api := .Values.api -}}
{{- if kindIs "invalid" $api.terminationGracePeriodSeconds -}}
{{- add $api.preStopSleepSeconds $api.gracefulShutdownSeconds 10 -}}
{{- else -}}
{{- $api.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{- define "tenantry.workerTerminationGracePeriodSeconds" -}}
{{- $worker := .Values.worker -}}
{{- if kindIs "invalid" $worker.terminationGracePeriodSeconds -}}
{{- add $worker.softShutdownSeconds 30 -}}
{{- else -}}
{{- $worker.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}
