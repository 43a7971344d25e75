-- Argo CD health check for ferry.dev Transports and Connections (docs/argocd/README.md).
-- Reads what the operator writes: status.state (Transport), status.status (Connection),
-- status.observedGeneration and the Ready, Degraded and Stalled conditions.
local hs = {}

local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function holds(c)
  return c ~= nil and c.status == "True"
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the ferry operator to report"
  return hs
end

local ready = condition(status.conditions, "Ready")
local degraded = condition(status.conditions, "Degraded")
local stalled = condition(status.conditions, "Stalled")

-- Stalled: ferry cannot go on until somebody changes something (an invalid object, a name
-- taken, objects the API server refuses, a missing target, a failed sync-set).
if holds(stalled) then
  hs.status = "Degraded"
  hs.message = message_of(stalled, "Stalled")
  return hs
end

-- Paused (ferry.dev/reconcile: paused): the operator keeps its hands off, so a newer spec is
-- not applied until the annotation goes.
local paused = condition(status.conditions, "ReconcilePaused")
if holds(paused) then
  hs.status = "Suspended"
  hs.message = "reconciliation paused (ferry.dev/reconcile: paused)"
  return hs
end

-- The worker has not applied the latest spec yet.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "The worker has not applied generation " .. generation .. " yet"
  return hs
end

if obj.kind == "Transport" then
  local state = status.state
  if state == "Store and Forward" then
    hs.status = "Degraded"
    hs.message = message_of(degraded, "The host is unreachable; transactions are queued")
    return hs
  end
  if (state == "Suspended" or state == "S&F Suspended") and holds(ready) then
    hs.status = "Suspended"
    hs.message = message_of(ready, state)
    return hs
  end
  if holds(ready) then
    hs.status = "Healthy"
    hs.message = message_of(ready, state)
    return hs
  end
  -- It ran before (a state is known) and its worker stopped answering.
  if state ~= nil and holds(degraded) then
    hs.status = "Degraded"
    hs.message = message_of(degraded, "Degraded")
    return hs
  end
else
  local value = status.status
  if value == "Failed" or value == "Unknown" then
    hs.status = "Degraded"
    hs.message = message_of(ready, value)
    return hs
  end
  if value == "Disabled" and holds(ready) then
    hs.status = "Suspended"
    hs.message = message_of(ready, "Stopped")
    return hs
  end
  if holds(ready) then
    hs.status = "Healthy"
    hs.message = message_of(ready, value)
    return hs
  end
end

-- Applying, starting, being suspended or resumed, waiting for a startup place or a worker.
hs.status = "Progressing"
hs.message = message_of(ready, "Reconciling")
return hs
