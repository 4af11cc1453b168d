-- Argo CD health of a StepTemplate (aleph.dev/v1alpha1).
-- The rules of this kind only: render-cm-patch.sh puts health/common.lua (the shared part,
-- which this uses) before them to make the script that Argo CD runs.
--
-- Healthy: Ready=True for the current generation: steps can use the template.
-- Progressing: no status yet, status of an older generation, being deleted.
-- Degraded: Ready=False: the template cannot be used (a reference to a param it does not
--   declare, a default that does not fit its type...); the message says what to fix.

return readyHealth({
  notReady = "The template cannot be used",
  working = "Validating",
})
