-- Argo CD health of an Aleph Tenant (aleph.dev/v1alpha1).
-- Runs in Argo CD's gopher-lua sandbox: Lua 5.1 with the base and table libraries only, so no
-- string functions or methods. See deploy/argocd/README.md for what each status means.
--
-- Healthy: Ready=True for the current generation: namespaces, quotas, policies and role
--   bindings are in place.
-- Suspended: ready but cordoned (spec.cordoned): new pods are refused on purpose.
-- Progressing: no status yet, status of an older generation, being deleted, or Ready not True
--   while the operator is still working (Progressing=True or a converging reason).
-- Degraded: Ready=False for any other reason (InvalidSpec, a namespace owned by someone else,
--   a forbidden request...), with the condition's message.

local function findCondition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == conditionType then
      return condition
    end
  end
  return nil
end

-- A condition's message, else its reason, else the fallback.
local function describe(condition, fallback)
  if condition ~= nil then
    if condition.message ~= nil and condition.message ~= "" then
      return condition.message
    end
    if condition.reason ~= nil and condition.reason ~= "" then
      return condition.reason
    end
  end
  return fallback
end

-- Why the status does not describe the current spec yet, or nil when it does.
local function staleness(condition)
  local generation = obj.metadata.generation
  if generation == nil then
    return nil
  end
  local observed = obj.status.observedGeneration
  if condition ~= nil and condition.observedGeneration ~= nil then
    observed = condition.observedGeneration
  end
  if observed == nil or observed < generation then
    return "Waiting for the operator to observe generation " .. generation
  end
  return nil
end

-- The operator is still working towards Ready: it says so with Progressing=True or with one of
-- these reasons on Ready=False. Any other Ready=False is a failure that needs a person.
local convergingReasons = {
  Creating = true,
  Deleting = true,
  Pending = true,
  Progressing = true,
  Provisioning = true,
  Reconciling = true,
  RollingOut = true,
  Updating = true,
  Waiting = true,
}

local function converging(ready)
  if ready.reason == "InvalidSpec" then
    return false
  end
  local progressing = findCondition("Progressing")
  if progressing ~= nil and progressing.status == "True" then
    return true
  end
  return convergingReasons[ready.reason] == true
end

if obj.metadata.deletionTimestamp ~= nil then
  local message = "Being deleted"
  if obj.metadata.finalizers ~= nil and #obj.metadata.finalizers > 0 then
    message = "Being deleted; waiting for finalizers: " .. table.concat(obj.metadata.finalizers, ", ")
  end
  return { status = "Progressing", message = message }
end

if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
  return { status = "Progressing", message = "Waiting for the operator to report status" }
end

local stale = staleness(nil)
if stale ~= nil then
  return { status = "Progressing", message = stale }
end

local ready = findCondition("Ready")
if ready == nil then
  return { status = "Progressing", message = "Waiting for the Ready condition" }
end
stale = staleness(ready)
if stale ~= nil then
  return { status = "Progressing", message = stale }
end

if ready.status == "True" then
  if obj.spec ~= nil and obj.spec.cordoned == true then
    return { status = "Suspended", message = "Cordoned: new pods are refused in every tenant namespace" }
  end
  return { status = "Healthy", message = describe(ready, "Ready") }
end
if ready.status == "False" and not converging(ready) then
  return { status = "Degraded", message = describe(ready, "Not ready") }
end
return { status = "Progressing", message = describe(ready, "Reconciling") }
