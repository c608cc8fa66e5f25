"""Read a fibrosis SR back with plain pydicom, independently of fibrosis.score.sr, the way
a consumer of TID 1500 reads it: measurement groups, their finding and source images."""
from __future__ import annotations

from typing import Any

FIBROSIS_OF_LUNG = ("SCT", "51615001")
FINDING = {("SCT", "52101004"): True, ("SCT", "272519000"): False, ("SCT", "373121007"): None}


def _name(item: Any) -> tuple[str, str]:
    c = item.ConceptNameCodeSequence[0]
    return c.CodingSchemeDesignator, c.CodeValue


def _value(item: Any) -> Any:
    vt = item.ValueType
    if vt == "NUM":
        return float(item.MeasuredValueSequence[0].NumericValue)
    if vt == "CODE":
        c = item.ConceptCodeSequence[0]
        return c.CodingSchemeDesignator, c.CodeValue
    if vt == "TEXT":
        return str(item.TextValue)
    if vt == "UIDREF":
        return str(item.UID)
    if vt == "IMAGE":
        return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return None


def _walk(items: Any):
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def group(container: Any) -> dict[str, Any]:
    """One measurement group: tracking id, probability, finding (True present / False
    absent / None not evaluated), the coded value, algorithm parameters, reason, refs."""
    out: dict[str, Any] = {"refs": [], "probability": None, "decision": None, "finding": None,
                           "parameters": []}
    for item in container.ContentSequence:
        key, val = _name(item), _value(item)
        if key == ("DCM", "112039"):
            out["tracking"] = val
        elif key == ("99FIBROSIS", "PROB"):
            out["probability"] = val
        elif key == FIBROSIS_OF_LUNG:
            out["finding"] = val
            out["decision"] = FINDING[val]
        elif key == ("99FIBROSIS", "REASON"):
            out["reason"] = val
        elif key == ("DCM", "111002"):  # algorithm parameters (TID 4019)
            out["parameters"].append(val)
        elif item.ValueType == "IMAGE":
            out["refs"].append(val)
    params = dict(p.split(" ", 1) for p in out["parameters"] if p.startswith("threshold "))
    if "threshold" in params:
        out["threshold"] = float(params["threshold"])
    name = [p for p in out["parameters"] if p.startswith("operating point ")]
    if name:
        out["threshold_name"] = name[0][len("operating point "):]
    return out


def read_sr(ds: Any) -> dict[str, Any]:
    """{'title', 'texts': {code: text}, 'observer': {...}, 'study': group, 'images': [group],
    'not_scored': [group], 'library': [SOP UIDs]}"""
    doc: dict[str, Any] = {"title": _name(ds), "texts": {}, "observer": {}, "images": [], "not_scored": [],
                           "study": None, "library": []}
    for item in ds.ContentSequence:
        key = _name(item)
        if item.RelationshipType == "HAS OBS CONTEXT":
            doc["observer"][key[1]] = _value(item)
        elif key == ("DCM", "111028"):  # Image Library
            doc["library"] = [_value(i) for i in _walk(item.ContentSequence) if i.ValueType == "IMAGE"]
        elif key == ("DCM", "126010"):  # Imaging Measurements
            for g in item.ContentSequence:
                res = group(g)
                tracking = res.get("tracking", "")
                if tracking == "study":
                    doc["study"] = res
                elif tracking.startswith("image "):
                    doc["images"].append(res)
                elif tracking.startswith("not scored "):
                    doc["not_scored"].append(res)
        elif key == ("UMLS", "C0034375"):
            for t in item.ContentSequence:
                doc["texts"][_name(t)[1]] = _value(t)
    return doc
