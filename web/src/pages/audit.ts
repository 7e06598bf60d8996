import { h } from "../dom.js"
import { type Ctx, pageHeader } from "../ui.js"

// The audit screens need the audit log API (GET /manage/audit), which lands with issue 6.
export const auditListPage = (_ctx: Ctx) =>
  h("div", null, pageHeader("Audit log"), h("p", null, "The audit log is not available on this server yet."))

export const auditDetailPage = auditListPage
