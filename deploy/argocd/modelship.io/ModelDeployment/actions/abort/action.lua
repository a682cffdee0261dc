-- Argo CD action "abort" of modelship.io/ModelDeployment: roll the canary back to the
-- stable revision (see docs/argocd.md).
-- Sets the modelship.io/abort annotation to <revision>@s<step>a<attempt> from status.canary:
-- a new value for each step and attempt, and the operator acts once per value.
local annotation = "modelship.io/abort"
local canary = nil
if obj.status ~= nil then
  canary = obj.status.canary
end
if canary == nil or canary.revision == nil then
  error("abort: the ModelDeployment has no canary release (status.canary is empty)", 0)
end
if canary.phase ~= "Progressing" and canary.phase ~= "Paused" and
    canary.phase ~= "Promoting" then
  error("abort: canary " .. canary.revision .. " is " .. tostring(canary.phase) ..
    "; abort applies only while it is Progressing, Paused or Promoting", 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations[annotation] = canary.revision .. "@s" .. tostring(canary.step or 0) ..
  "a" .. tostring(canary.attempt or 1)
return obj
