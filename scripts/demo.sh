#!/usr/bin/env bash
# Brings up a working system on this machine: the local control plane with its
# real node, the S3 and SageMaker emulator, the operator installed by its Helm
# chart from the locally built image (running as pods on the real node), and
# the examples; waits until the examples have settled and shows them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
source "$root/e2e/cluster/lib.sh"
"$root/e2e/cluster/build.sh"
"$root/e2e/images/build.sh"
for bin in kubectl helm; do PATH="$(dirname "$(bin_path "$bin")"):$PATH"; done
export PATH
"$root/e2e/cluster/up.sh" >/dev/null
export KUBECONFIG="$ALEPH_STATE/kubeconfig"
# shellcheck disable=SC1091
source "$ALEPH_STATE/ports.env"

# Nothing the demo runs has AWS configuration of its own: no EC2 metadata lookups.
export AWS_EC2_METADATA_DISABLED=true
# moto serves SageMaker (and S3) on the host address the real node's pods reach.
export ALEPH_MOTO_STATE="$ALEPH_STATE/moto" ALEPH_MOTO_HOST="$HOST_IP"
eval "$("$root/e2e/sagemaker/moto.sh" start)"
moto_port=${ALEPH_MOTO_URL##*:}

values="$ALEPH_STATE/demo-values.yaml"
cat >"$values" <<EOF
image: {repository: aleph.local/aleph-operator, tag: dev, pullPolicy: Never}
replicaCount: 2
operator:
  logFormat: text
  modelCacheImage: aleph.local/model-cache:dev
  aws: {region: us-east-1}
nodeSelector: {aleph.dev/node-pool: real}
tolerations:
- {key: aleph.dev/real-node, operator: Exists, effect: NoSchedule}
gateway:
  image: {repository: aleph.local/aleph-gateway, tag: dev, pullPolicy: Never}
  nodeSelector: {aleph.dev/node-pool: real}
  tolerations:
  - {key: aleph.dev/real-node, operator: Exists, effect: NoSchedule}
  resources: {requests: {cpu: 10m, memory: 32Mi}}
networkPolicy:
  # The local API server's port and the emulator's, beside the usual ones.
  egressPorts: [443, 6443, $APISERVER_PORT, $moto_port]
extraEnv:
- {name: AWS_EC2_METADATA_DISABLED, value: "true"}
- {name: AWS_ENDPOINT_URL_SAGEMAKER, value: "$ALEPH_MOTO_URL"}
- {name: AWS_ACCESS_KEY_ID, value: testing}
- {name: AWS_SECRET_ACCESS_KEY, value: testing}
EOF
# A platform namespace: tenants' isolation admits the gateway's requests from it.
kubectl create namespace aleph-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label --overwrite namespace aleph-system aleph.dev/platform=true >/dev/null
echo "==> helm upgrade --install aleph charts/aleph-operator (namespace aleph-system)" >&2
helm upgrade --install aleph charts/aleph-operator --namespace aleph-system --create-namespace \
  -f "$values" --wait --timeout 5m >/dev/null
kubectl -n aleph-system rollout status deployment/aleph-aleph-operator --timeout=180s >/dev/null

kubectl apply -f examples/tenant.yaml
kubectl wait --for=condition=Ready --timeout=180s tenant/acme
kubectl -n acme-research get secret hf-token >/dev/null 2>&1 ||
  kubectl -n acme-research create secret generic hf-token --from-literal=token=hf_demo_placeholder >/dev/null
for f in examples/*.yaml; do
  [ "$f" = examples/tenant.yaml ] || kubectl apply -n acme-research -f "$f"
done

# A model that really answers: a tiny GGUF (random weights) in the S3 emulator,
# served by llama.cpp in acme-prod, whose pods go to the real node.
echo "==> writing a tiny GGUF model and uploading it to the S3 emulator" >&2
cargo build --quiet --release -p tiny-gguf
gguf="$ALEPH_STATE/tiny-chat.gguf"
"${CARGO_TARGET_DIR:-$root/target}/release/tiny-gguf" "$gguf" tiny-chat 1 >/dev/null
"$("$root/e2e/sagemaker/moto.sh" python)" - "$ALEPH_MOTO_URL" "$gguf" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket="aleph-demo-models")
s3.upload_file(sys.argv[2], "aleph-demo-models", "tiny-chat/model.gguf")
PY
kubectl annotate --overwrite namespace acme-prod \
  "scheduler.alpha.kubernetes.io/node-selector=aleph.dev/node-pool=real" \
  "scheduler.alpha.kubernetes.io/defaultTolerations=[{\"key\":\"aleph.dev/real-node\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]" >/dev/null
kubectl -n acme-prod create secret generic demo-s3 --dry-run=client -o yaml \
  --from-literal=AWS_ENDPOINT_URL="$ALEPH_MOTO_URL" --from-literal=AWS_REGION=us-east-1 \
  --from-literal=AWS_ACCESS_KEY_ID=testing --from-literal=AWS_SECRET_ACCESS_KEY=testing |
  kubectl apply -f - >/dev/null
kubectl apply -n acme-prod -f examples/serving/tiny-chat.yaml

# Settled: every object's status describes its current generation, has a Ready
# condition (a PipelineRun: Succeeded), and stays the same over two looks five
# seconds apart.
echo "==> waiting for the examples to settle" >&2
summary() {
  kubectl get aleph -A -o jsonpath='{range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name} {.metadata.generation} {.status.observedGeneration} ready={.status.conditions[?(@.type=="Ready")].status} succeeded={.status.conditions[?(@.type=="Succeeded")].status} {.status.conditions[?(@.type=="Ready")].message}{"\n"}{end}'
}
previous="" deadline=$((SECONDS + 300))
while :; do
  current=$(summary)
  if [ "$current" = "$previous" ] && ! awk '$2 != $3 || ($4 == "ready=" && $5 == "succeeded=") { bad = 1 } END { exit !bad }' <<<"$current"; then
    break
  fi
  if [ $SECONDS -ge $deadline ]; then
    echo "==> the examples did not settle within 300 s; as they are now:" >&2
    break
  fi
  previous=$current
  sleep 5
done
kubectl get aleph -A
echo
kubectl get pods -A -o wide --field-selector spec.nodeName="$REAL_NODE_NAME"

# The real model answers, through the same commands the user gets below.
kubectl -n acme-prod wait --for=condition=Ready --timeout=300s aimodel/tiny-chat >/dev/null ||
  echo "==> aimodel/tiny-chat is not Ready: kubectl -n acme-prod describe aimodel tiny-chat" >&2
forward_log="$ALEPH_STATE/logs/port-forward.log"
kubectl -n acme-prod port-forward svc/tiny-chat 8080:8080 >"$forward_log" 2>&1 &
forward=$!
for _ in $(seq 1 20); do curl -fsS http://127.0.0.1:8080/health >/dev/null 2>&1 && break; sleep 0.5; done
echo
echo "==> POST /v1/chat/completions to tiny-chat (llama.cpp on $REAL_NODE_NAME):"
curl -sS --max-time 30 http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model": "tiny-chat", "max_tokens": 12, "messages": [{"role": "user", "content": "Hello!"}]}' ||
  echo "(no answer; see $forward_log)"
echo
kill "$forward" 2>/dev/null || true

# The same model through aleph-gateway, with an API key of the tenant acme: the
# key's SHA-256 goes into a labelled Secret in one of the tenant's namespaces.
key_file="$ALEPH_STATE/demo-api-key"
[ -s "$key_file" ] || echo "sk-aleph-$(head -c 32 /dev/urandom | sha256sum | cut -c1-64)" >"$key_file"
api_key=$(cat "$key_file")
kubectl -n acme-prod create secret generic demo-api-key --dry-run=client -o yaml \
  --from-literal=sha256="$(printf %s "$api_key" | sha256sum | cut -d' ' -f1)" |
  kubectl label --local -f - aleph.dev/gateway-key=true -o yaml | kubectl apply -f - >/dev/null
gateway_log="$ALEPH_STATE/logs/port-forward-gateway.log"
kubectl -n aleph-system port-forward svc/aleph-aleph-operator-gateway 8081:80 >"$gateway_log" 2>&1 &
forward=$!
for _ in $(seq 1 20); do curl -fsS http://127.0.0.1:8081/readyz >/dev/null 2>&1 && break; sleep 0.5; done
echo "==> the same through aleph-gateway with acme's API key (GET /v1/models, then a chat):"
for _ in $(seq 1 20); do
  curl -fsS http://127.0.0.1:8081/v1/models -H "Authorization: Bearer $api_key" 2>/dev/null | grep -q tiny-chat && break
  sleep 0.5
done
curl -sS --max-time 10 http://127.0.0.1:8081/v1/models -H "Authorization: Bearer $api_key" || true
echo
curl -sS --max-time 30 http://127.0.0.1:8081/v1/chat/completions -H "Authorization: Bearer $api_key" \
  -H 'Content-Type: application/json' \
  -d '{"model": "tiny-chat", "max_tokens": 12, "messages": [{"role": "user", "content": "Hello!"}]}' ||
  echo "(no answer; see $gateway_log)"
echo
kill "$forward" 2>/dev/null || true
cat <<EOT

Aleph is running: the operator as pods on the real node ($REAL_NODE_NAME), beside
kwok's fake CPU and GPU nodes. In this shell:
  export KUBECONFIG=$KUBECONFIG
  export PATH=$(dirname "$(bin_path kubectl)"):\$PATH
  kubectl get aleph -A
  kubectl describe aimodel -n acme-research      # each object's status says what it is doing
Talk to the model that really serves (llama.cpp, a tiny random-weight GGUF):
  kubectl -n acme-prod port-forward svc/tiny-chat 8080:8080 &
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "tiny-chat", "messages": [{"role": "user", "content": "Hello!"}]}'
  (add "stream": true for server-sent events; inside the cluster its URL is
   $(kubectl -n acme-prod get aimodel tiny-chat -o jsonpath='{.status.url}'))
Or through aleph-gateway, with acme's API key (in $key_file):
  kubectl -n aleph-system port-forward svc/aleph-aleph-operator-gateway 8081:80 &
  curl http://127.0.0.1:8081/v1/chat/completions -H "Authorization: Bearer \$(cat $key_file)" \\
    -H 'Content-Type: application/json' -d '{"model": "tiny-chat", "messages": [{"role": "user", "content": "Hello!"}]}'
  (inside the cluster: $(kubectl -n acme-prod get aimodel tiny-chat -o jsonpath='{.status.gatewayUrl}'))
Operator logs: kubectl -n aleph-system logs deploy/aleph-aleph-operator
Stop everything: make down
EOT
