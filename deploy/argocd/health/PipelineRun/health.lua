-- Argo CD health of an Aleph PipelineRun (aleph.dev/v1alpha1).
-- The rules of this kind only: render-cm-patch.sh puts health/common.lua (the shared part,
-- which this uses) before them to make the script that Argo CD runs.
--
-- A run is read from its Succeeded condition, with status.phase as a fallback:
-- Healthy: Succeeded=True (phase Succeeded).
-- Degraded: Succeeded=False (phase Failed): StepFailed, Timeout, InvalidGraph,
--   ParameterMissing..., with the condition's message.
-- Suspended: cancelled on purpose (reason Cancelled, phase Cancelled): stopped by a person, not
--   broken, and not a success either.
-- Progressing: not started yet, Pending, Running (Succeeded=Unknown), being cancelled or deleted.
-- A finished run never changes, so its outcome wins over a status of an older generation.

local deleting = deletionHealth()
if deleting ~= nil then
  return deleting
end

if obj.status == nil then
  return { status = "Progressing", message = "Waiting for the run to start" }
end

local succeeded = findCondition("Succeeded")
local phase = obj.status.phase

if (succeeded ~= nil and succeeded.status == "True") or phase == "Succeeded" then
  local fallback = "Succeeded"
  if obj.status.duration ~= nil then
    fallback = "Succeeded in " .. obj.status.duration
  end
  return { status = "Healthy", message = describe(succeeded, fallback) }
end

if (succeeded ~= nil and succeeded.status == "False" and succeeded.reason == "Cancelled") or phase == "Cancelled" then
  return { status = "Suspended", message = describe(succeeded, "Cancelled") }
end

if (succeeded ~= nil and succeeded.status == "False") or phase == "Failed" then
  return { status = "Degraded", message = describe(succeeded, "Failed") }
end

local progress = ""
if obj.status.progress ~= nil then
  progress = " (" .. obj.status.progress .. " steps finished)"
end

if obj.spec ~= nil and obj.spec.cancel == true then
  return { status = "Progressing", message = "Cancelling" .. progress }
end

if phase == nil or phase == "Pending" then
  return { status = "Progressing", message = describe(succeeded, "Pending") }
end

return { status = "Progressing", message = describe(succeeded, "Running") .. progress }
