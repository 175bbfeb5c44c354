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

{{/* The credentials mount directory without a trailing slash. */}}
{{- define "graph-cdc.credentials.dir" -}}
{{- trimSuffix "/" .Values.secrets.mountPath }}
{{- end }}

{{/* The chart mounts the Graph client secret as a file ("true" or empty): neither certificate
     credentials nor a client_secret_file of the user's own in `config.graph`. */}}
{{- define "graph-cdc.credentials.clientSecret" -}}
{{- if not (or .Values.useCertificate (hasKey (.Values.config.graph | default dict) "client_secret_file")) }}true{{ end }}
{{- end }}

{{/* The chart mounts the REST token as a file ("true" or empty): `secrets.authToken`, or
     `existingSecret` (key auth-token) unless the API is explicitly left open; never when
     `config.server.auth_token_file` names a file of the user's own. */}}
{{- define "graph-cdc.credentials.token" -}}
{{- $s := .Values.secrets }}
{{- if not (hasKey (.Values.config.server | default dict) "auth_token_file") }}
{{- if or $s.authToken (and $s.existingSecret (not .Values.server.allowUnauthenticated)) }}true{{ end }}
{{- end }}
{{- end }}

{{/* The items of the credentials Secret volume, as a JSON list (empty: no volume). */}}
{{- define "graph-cdc.credentials.items" -}}
{{- $items := list }}
{{- if .Values.useCertificate }}
{{- $items = append $items (dict "key" "client.crt" "path" "client.crt") }}
{{- $items = append $items (dict "key" "client.key" "path" "client.key") }}
{{- else if include "graph-cdc.credentials.clientSecret" . }}
{{- $items = append $items (dict "key" "client-secret" "path" "client-secret") }}
{{- end }}
{{- if include "graph-cdc.credentials.token" . }}
{{- $items = append $items (dict "key" "auth-token" "path" "auth-token") }}
{{- end }}
{{- toJson $items }}
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
{{- $s := .Values.secrets }}
{{- $graph := .Values.config.graph | default dict }}
{{- $server := .Values.config.server | default dict }}
{{- if hasKey $graph "client_secret" }}
{{- fail "config.graph.client_secret: a secret in the ConfigMap; set secrets.clientSecret (or secrets.existingSecret, key client-secret) instead" }}
{{- end }}
{{- if hasKey $server "auth_token" }}
{{- fail "config.server.auth_token: a secret in the ConfigMap; set secrets.authToken (or secrets.existingSecret, key auth-token) instead" }}
{{- end }}
{{- if hasKey (.Values.config.notifications | default dict) "client_state" }}
{{- fail "config.notifications.client_state: a secret in the ConfigMap; give it as the environment variable GRAPH_CDC__NOTIFICATIONS__CLIENT_STATE from a Secret (extraEnv with valueFrom.secretKeyRef) instead" }}
{{- end }}
{{- if hasKey ((.Values.config.notifications | default dict).eventhub | default dict) "connection_string" }}
{{- fail "config.notifications.eventhub.connection_string: a secret in the ConfigMap; give it as the environment variable GRAPH_CDC__NOTIFICATIONS__EVENTHUB__CONNECTION_STRING from a Secret (extraEnv with valueFrom.secretKeyRef) instead" }}
{{- end }}
{{- if hasKey $server "allow_unauthenticated" }}
{{- fail "config.server.allow_unauthenticated: set server.allowUnauthenticated instead" }}
{{- end }}
{{- range $k := list "tls_cert_path" "tls_key_path" }}
{{- if hasKey $server $k }}
{{- fail (printf "config.server.%s: set server.tls.secretName (a kubernetes.io/tls Secret) instead" $k) }}
{{- end }}
{{- end }}
{{- if and .Values.server.tls.secretName (has .Values.server.tls.mountPath (list "" "/" "/etc/graph-cdc" "/tmp" (include "graph-cdc.credentials.dir" .) (include "graph-cdc.kafkaTls.dir" .))) }}
{{- fail "server.tls.mountPath: must be a directory of its own (not /, /etc/graph-cdc, /tmp, secrets.mountPath or kafka.tls.mountPath)" }}
{{- end }}
{{- range $k := list "certificate_path" "private_key_path" }}
{{- if hasKey $graph $k }}
{{- fail (printf "config.graph.%s: the chart sets it from secrets.certificate/privateKey (useCertificate); remove it" $k) }}
{{- end }}
{{- end }}
{{- if and .Values.useCertificate (hasKey $graph "client_secret_file") }}
{{- fail "config.graph.client_secret_file: useCertificate is set; give the Graph credentials one way" }}
{{- end }}
{{- if and $s.clientSecret (hasKey $graph "client_secret_file") }}
{{- fail "config.graph.client_secret_file and secrets.clientSecret: give the Graph client secret one way" }}
{{- end }}
{{- if and $s.authToken (hasKey $server "auth_token_file") }}
{{- fail "config.server.auth_token_file and secrets.authToken: give the REST token one way" }}
{{- end }}
{{- if not (or (include "graph-cdc.credentials.token" .) (hasKey $server "auth_token_file") .Values.server.allowUnauthenticated) }}
{{- fail "secrets.authToken: required: without a token anyone who reaches port 8083 can stop the connector, rewrite its offsets or resync everything. Set secrets.authToken (e.g. --set secrets.authToken=$(openssl rand -hex 32)), or secrets.existingSecret naming a Secret with the key auth-token, or server.allowUnauthenticated=true to run the REST API without a token" }}
{{- end }}
{{- if has (include "graph-cdc.credentials.dir" .) (list "" "/etc/graph-cdc" "/tmp" (include "graph-cdc.kafkaTls.dir" .)) }}
{{- fail "secrets.mountPath: must be a directory of its own (not /, /etc/graph-cdc, /tmp or kafka.tls.mountPath)" }}
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
     the chart derives from `kafka`, `errors`, `server` and the credential files it mounts. */}}
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
{{- $graph := $config.graph | default dict }}
{{- $server := $config.server | default dict }}
{{- $dir := include "graph-cdc.credentials.dir" . }}
{{- if .Values.useCertificate }}
{{- $_ := set $graph "certificate_path" (printf "%s/client.crt" $dir) }}
{{- $_ := set $graph "private_key_path" (printf "%s/client.key" $dir) }}
{{- else if include "graph-cdc.credentials.clientSecret" . }}
{{- $_ := set $graph "client_secret_file" (printf "%s/client-secret" $dir) }}
{{- end }}
{{- if include "graph-cdc.credentials.token" . }}
{{- $_ := set $server "auth_token_file" (printf "%s/auth-token" $dir) }}
{{- end }}
{{- if .Values.server.allowUnauthenticated }}
{{- $_ := set $server "allow_unauthenticated" true }}
{{- end }}
{{- if .Values.server.tls.secretName }}
{{- $_ := set $server "tls_cert_path" (printf "%s/tls.crt" .Values.server.tls.mountPath) }}
{{- $_ := set $server "tls_key_path" (printf "%s/tls.key" .Values.server.tls.mountPath) }}
{{- end }}
{{- $_ := set $config "graph" $graph }}
{{- if $server }}
{{- $_ := set $config "server" $server }}
{{- end }}
{{- toJson $config }}
{{- end }}

{{/* The REST API's scheme: HTTPS when server.tls.secretName is set. */}}
{{- define "graph-cdc.scheme" -}}
{{- if .Values.server.tls.secretName }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}
