-- Argo CD action "promote" of modelship.io/ModelDeployment: advance the canary past its current
-- step (see docs/argocd.md).
-- Sets the modelship.io/promote annotation to <revision>@s<step>a<attempt> from status.canary:
-- a new value for each step and attempt, and the operator acts once per value.
local annotation = "modelship.io/promote"
local canary = nil
if obj.status ~= nil then
  canary = obj.status.canary
end
if canary == nil or canary.revision == nil then
  error("promote: the ModelDeployment has no canary release (status.canary is empty)", 0)
end
if canary.phase ~= "Progressing" and canary.phase ~= "Paused" then
  error("promote: canary " .. canary.revision .. " is " .. tostring(canary.phase) ..
    "; promote applies only while it is Progressing or Paused", 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations[annotation] = canary.revision .. "@s" .. tostring(canary.step or 0) ..
  "a" .. tostring(canary.attempt or 1)
return obj
