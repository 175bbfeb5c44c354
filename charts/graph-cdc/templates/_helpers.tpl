{{/* Chart name. */}}
{{- define "graph-cdc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless overridden. */}}
{{- define "graph-cdc.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels. */}}
{{- define "graph-cdc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "graph-cdc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "graph-cdc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "graph-cdc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Service account name. */}}
{{- define "graph-cdc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "graph-cdc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding credentials. */}}
{{- define "graph-cdc.secretName" -}}
{{- default (include "graph-cdc.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Kafka TLS material comes from existing Secrets ("true" or empty). */}}
{{- define "graph-cdc.kafkaTls.fromSecret" -}}
{{- if or .Values.kafka.tls.existingSecret .Values.kafka.tls.caSecret }}true{{ end }}
{{- end }}

{{/* A CA file is mounted ("true" or empty). */}}
{{- define "graph-cdc.kafkaTls.hasCa" -}}
{{- $t := .Values.kafka.tls }}
{{- if include "graph-cdc.kafkaTls.fromSecret" . }}
{{- if $t.caKey }}true{{ end }}
{{- else if $t.ca }}true{{ end }}
{{- end }}

{{/* A client certificate and key are mounted ("true" or empty). */}}
{{- define "graph-cdc.kafkaTls.hasCert" -}}
{{- $t := .Values.kafka.tls }}
{{- if include "graph-cdc.kafkaTls.fromSecret" . }}
{{- if $t.clientCertificate }}true{{ end }}
{{- else if $t.cert }}true{{ end }}
{{- end }}

{{/* Anything is mounted for Kafka TLS ("true" or empty). */}}
{{- define "graph-cdc.kafkaTls.enabled" -}}
{{- if or (include "graph-cdc.kafkaTls.hasCa" .) (include "graph-cdc.kafkaTls.hasCert" .) }}true{{ end }}
{{- end }}

{{/* The Secret the chart creates from kafka.tls.ca/cert/key. */}}
{{- define "graph-cdc.kafkaTls.secretName" -}}
{{- printf "%s-kafka-tls" (include "graph-cdc.fullname" .) }}
{{- end }}

{{/* The mount directory without a trailing slash. */}}
{{- define "graph-cdc.kafkaTls.dir" -}}
{{- trimSuffix "/" .Values.kafka.tls.mountPath }}
{{- end }}

{{/* Combinations the schema cannot refuse; fails the render with the value's name. */}}
{{- define "graph-cdc.checkValues" -}}
{{- $t := .Values.kafka.tls }}
{{- if and (include "graph-cdc.kafkaTls.fromSecret" .) (or $t.ca $t.cert $t.key) }}
{{- fail "kafka.tls: set either existingSecret/caSecret or the PEM values ca/cert/key, not both" }}
{{- end }}
{{- if and $t.clientCertificate (not $t.existingSecret) }}
{{- fail "kafka.tls.clientCertificate: needs kafka.tls.existingSecret (the Secret holding certKey and keyKey)" }}
{{- end }}
{{- if and $t.clientCertificate (not (and $t.certKey $t.keyKey)) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey: required with kafka.tls.clientCertificate" }}
{{- end }}
{{- if and $t.caSecret (not $t.caKey) }}
{{- fail "kafka.tls.caKey: required with kafka.tls.caSecret" }}
{{- end }}
{{- if or (and $t.cert (not $t.key)) (and $t.key (not $t.cert)) }}
{{- fail "kafka.tls.cert and kafka.tls.key: give both (a client certificate and its private key) or neither" }}
{{- end }}
{{- if and (not .Values.secrets.existingSecret) (has (include "graph-cdc.fullname" .) (list $t.existingSecret $t.caSecret)) }}
{{- fail (printf "kafka.tls: Secret %s is the one the chart creates for `secrets`; use another name (or secrets.existingSecret)" (include "graph-cdc.fullname" .)) }}
{{- end }}
{{- if has (include "graph-cdc.kafkaTls.dir" .) (list "" "/etc/graph-cdc" "/tmp") }}
{{- fail "kafka.tls.mountPath: must be a directory of its own (not /, /etc/graph-cdc or /tmp)" }}
{{- end }}
{{- if and (eq .Values.errors.tolerance "all") (not .Values.errors.deadLetterTopic) }}
{{- fail "errors.deadLetterTopic: required with errors.tolerance all" }}
{{- end }}
{{- end }}

{{/* A librdkafka property value as the string librdkafka expects: whole numbers without
     the ".0" or exponent YAML numbers get (4000000, not 4e+06). */}}
{{- define "graph-cdc.optionValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* The graph-cdc configuration the ConfigMap holds, as a dict in JSON: `config` plus what
     the chart derives from `kafka` and `errors`. */}}
{{- define "graph-cdc.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $kafka := $config.kafka | default dict }}
{{- $tables := dict "options" (dict) "producer_options" .Values.kafka.producerOptions "consumer_options" .Values.kafka.consumerOptions "admin_options" .Values.kafka.adminOptions }}
{{- range $table, $chartOptions := $tables }}
{{- $merged := dict }}
{{- range $k, $v := (get $kafka $table | default dict) }}
{{- $_ := set $merged $k (include "graph-cdc.optionValue" $v) }}
{{- end }}
{{- range $k, $v := ($chartOptions | default dict) }}
{{- $_ := set $merged $k (include "graph-cdc.optionValue" $v) }}
{{- end }}
{{- if $merged }}
{{- $_ := set $kafka $table $merged }}
{{- end }}
{{- end }}
{{- if include "graph-cdc.kafkaTls.enabled" . }}
{{- $options := get $kafka "options" | default dict }}
{{- $dir := include "graph-cdc.kafkaTls.dir" . }}
{{- $files := dict }}
{{- if include "graph-cdc.kafkaTls.hasCa" . }}
{{- $_ := set $files "ssl.ca.location" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- if include "graph-cdc.kafkaTls.hasCert" . }}
{{- $_ := set $files "ssl.certificate.location" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $files "ssl.key.location" (printf "%s/tls.key" $dir) }}
{{- end }}
{{- range $k, $v := $files }}
{{- if hasKey $options $k }}
{{- fail (printf "config.kafka.options.%s: the chart sets it from kafka.tls; remove it" $k) }}
{{- end }}
{{- $_ := set $options $k $v }}
{{- end }}
{{- if not (hasKey $options "security.protocol") }}
{{- $_ := set $options "security.protocol" "SSL" }}
{{- end }}
{{- $_ := set $kafka "options" $options }}
{{- end }}
{{- $_ := set $config "kafka" $kafka }}
{{- if hasKey $config "errors" }}
{{- fail "config.errors: set the chart's errors.tolerance and errors.deadLetterTopic instead" }}
{{- end }}
{{- $errors := dict "tolerance" .Values.errors.tolerance }}
{{- with .Values.errors.deadLetterTopic }}
{{- $_ := set $errors "dead_letter_topic" . }}
{{- end }}
{{- $_ := set $config "errors" $errors }}
{{- toJson $config }}
{{- end }}
