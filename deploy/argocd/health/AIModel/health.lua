-- Argo CD health of an Aleph AIModel (aleph.dev/v1alpha1).
-- The rules of this kind only: render-cm-patch.sh puts health/common.lua (the shared part,
-- which this uses) before them to make the script that Argo CD runs.
--
-- Healthy: Ready=True for the current generation: the model is served (GPU Deployment or
--   SageMaker endpoint InService).
-- Progressing: no status yet, status of an older generation, being deleted, or not Ready while
--   the operator is converging (downloading weights, training, rolling out, endpoint Creating).
-- Degraded: Degraded=True (training or endpoint failed, pods cannot be scheduled...), or
--   Ready=False with nothing in progress, with the failing condition's message.

return readyHealth({ before = degradedHealth, reportProgressing = true })
